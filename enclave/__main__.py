from enclave.cli import main

main()
