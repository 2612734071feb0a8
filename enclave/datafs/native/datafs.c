/*
 * enclave-datafs: the native decrypting mount of one stored version (enclave-store/2).
 *
 * The fast path behind `python -m enclave.datafs`: the Python daemon stays the process the
 * hub starts and supervises this one. It opens the store's index with the data key and writes
 * a table on our standard input (never argv, the environment or a file):
 *
 *   "EDFS1"  key[32]  u32 segment_size  u64 mtime_ns  u16+store_id  u16+mountpoint  u32 count
 *   count x { u16+path  u64 size  u8 kind
 *             kind 0 (stored): u32 object  u16+object_file  u64 base  u64 length
 *             kind 1 (memory): the file's size bytes of content }
 *
 * (integers big-endian, "u16+" a u16 byte count and that many bytes). We mount, print
 * "ready" on standard output, and serve reads by decrypting the segment records they cover,
 * with the same checks as ingestion.store.RangeReader: each segment's length and last flag
 * where the file's size puts them, AES-256-GCM with nonce = u32 object | u64 segment and
 * associated data "enclave-store/1\0<store id>\0<path>\0" u64 segment u8 last. A failed
 * check is EIO for the reader (never other bytes) and one line on standard output,
 *
 *   fault <file number> <kind> <segment or errno>
 *
 * which the Python daemon turns into the same audit entry as its own path does, answering
 * one byte when it has (standard output is a socket, so the answer comes back on it).
 * Read-only, root-owned 0444/0555, kernel_cache and long timeouts: a version never changes.
 */
#define FUSE_USE_VERSION 312
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <malloc.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC_LEN 8 /* "ENCSTOR1" at the start of every object */
#define SEG_HEADER 5 /* u32 ciphertext length | u8 flags */
#define TAG_LEN 16
#define FLAG_LAST 1
#define CACHE_SECONDS 3600.0
#define LABEL "enclave-store/1"

struct node {
    char *path; /* "/a/b", the key FUSE looks us up by */
    const char *name; /* last component, inside path */
    int is_dir;
    uint64_t size;
    /* folders */
    struct node **children;
    size_t nchildren, cap;
    unsigned subdirs;
    /* files */
    uint32_t number; /* position in the table: what a fault line names */
    int stored;
    uint32_t object;
    char *object_file;
    uint64_t base, length;
    unsigned char *content;
    unsigned char *aad; /* LABEL\0store id\0path\0, the fixed part of every segment's AAD */
    size_t aad_len;
    struct node *next; /* hash chain */
};

struct handle {
    struct node *node;
    int fd;
};

static unsigned char data_key[32];
static uint32_t seg_size;
static struct timespec mtime;
static char *store_id;
static char *mountpoint;
static struct node *root;
static struct node **table;
static size_t table_size;
static uint64_t total_bytes, total_files;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t thread_key;

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("enclave-datafs: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    OPENSSL_cleanse(data_key, sizeof data_key);
    exit(2);
}

/* A fault line, and wait until the daemon has written its audit entry (it answers one byte
 * on the same socket): the reader's EIO must not come before the audit entry does. The
 * lock keeps lines and answers paired; faults are rare, so serialising them costs nothing. */
static void fault(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line)
        return;
    pthread_mutex_lock(&out_lock);
    if (write(STDOUT_FILENO, line, (size_t)n) == n) {
        char ack;
        while (read(STDOUT_FILENO, &ack, 1) < 0 && errno == EINTR)
            ;
    }
    pthread_mutex_unlock(&out_lock);
}

/* One line to the supervising daemon, no answer expected. */
static void say(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line)
        return;
    pthread_mutex_lock(&out_lock);
    ssize_t w = write(STDOUT_FILENO, line, (size_t)n);
    pthread_mutex_unlock(&out_lock);
    (void)w; /* the daemon gone means we are being torn down anyway */
}

/* ---- the table on standard input */

struct input {
    unsigned char *p, *end;
};

static const unsigned char *take(struct input *in, size_t n, const char *what)
{
    if ((size_t)(in->end - in->p) < n)
        die("the table on standard input ends inside %s", what);
    const unsigned char *at = in->p;
    in->p += n;
    return at;
}

static uint64_t take_uint(struct input *in, int bytes, const char *what)
{
    const unsigned char *at = take(in, (size_t)bytes, what);
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = (v << 8) | at[i];
    return v;
}

static char *take_text(struct input *in, const char *what)
{
    size_t n = (size_t)take_uint(in, 2, what);
    const unsigned char *at = take(in, n, what);
    char *s = malloc(n + 1);
    if (!s)
        die("out of memory reading %s", what);
    memcpy(s, at, n);
    s[n] = 0;
    if (strlen(s) != n)
        die("%s contains a NUL byte", what);
    return s;
}

static uint64_t hash_path(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static struct node *find(const char *path)
{
    for (struct node *n = table[hash_path(path) % table_size]; n; n = n->next)
        if (strcmp(n->path, path) == 0)
            return n;
    return NULL;
}

static struct node *new_node(const char *path, int is_dir)
{
    struct node *n = calloc(1, sizeof *n);
    if (!n || !(n->path = strdup(path)))
        die("out of memory building the tree");
    n->name = strrchr(n->path, '/') + 1;
    n->is_dir = is_dir;
    uint64_t h = hash_path(path) % table_size;
    n->next = table[h];
    table[h] = n;
    return n;
}

static void add_child(struct node *dir, struct node *child)
{
    if (dir->nchildren == dir->cap) {
        dir->cap = dir->cap ? dir->cap * 2 : 8;
        dir->children = realloc(dir->children, dir->cap * sizeof *dir->children);
        if (!dir->children)
            die("out of memory building the tree");
    }
    dir->children[dir->nchildren++] = child;
    if (child->is_dir)
        dir->subdirs++;
}

/* The folder at path (created with its parents as needed). */
static struct node *folder(char *path)
{
    struct node *n = find(path);
    if (n) {
        if (!n->is_dir)
            die("%s is a file and a folder", path);
        return n;
    }
    char *slash = strrchr(path, '/');
    struct node *parent;
    if (slash == path) {
        parent = root;
    } else {
        *slash = 0;
        parent = folder(path);
        *slash = '/';
    }
    n = new_node(path, 1);
    add_child(parent, n);
    return n;
}

static int by_name(const void *a, const void *b)
{
    return strcmp((*(struct node *const *)a)->name, (*(struct node *const *)b)->name);
}

static void read_table(void)
{
    size_t cap = 1 << 16, len = 0;
    unsigned char *buf = malloc(cap);
    for (;;) {
        if (!buf)
            die("out of memory reading the table");
        if (len == cap) {
            unsigned char *bigger = malloc(cap * 2);
            if (bigger) {
                memcpy(bigger, buf, len);
                OPENSSL_cleanse(buf, len); /* it holds the key */
            }
            free(buf);
            buf = bigger;
            cap *= 2;
            continue;
        }
        ssize_t n = read(STDIN_FILENO, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("reading the table on standard input: %s", strerror(errno));
        if (n == 0)
            break;
        len += (size_t)n;
    }
    struct input in = {buf, buf + len};
    if (memcmp(take(&in, 5, "the format mark"), "EDFS1", 5) != 0)
        die("standard input is not an enclave-datafs table (EDFS1)");
    memcpy(data_key, take(&in, 32, "the data key"), 32);
    seg_size = (uint32_t)take_uint(&in, 4, "the segment size");
    if (seg_size == 0)
        die("the segment size is 0");
    uint64_t ns = take_uint(&in, 8, "the time stamp");
    mtime.tv_sec = (time_t)(ns / 1000000000ULL);
    mtime.tv_nsec = (long)(ns % 1000000000ULL);
    store_id = take_text(&in, "the store id");
    mountpoint = take_text(&in, "the mount point");
    uint32_t count = (uint32_t)take_uint(&in, 4, "the file count");
    table_size = (size_t)count * 2 + 64;
    table = calloc(table_size, sizeof *table);
    if (!table)
        die("out of memory for %u files", count);
    root = new_node("/", 1);
    root->name = "";
    for (uint32_t i = 0; i < count; i++) {
        char *rel = take_text(&in, "a file's path");
        char *path = malloc(strlen(rel) + 2);
        if (!path)
            die("out of memory building the tree");
        path[0] = '/';
        strcpy(path + 1, rel);
        if (!rel[0] || find(path))
            die("file %s is empty or in the table twice", rel);
        uint64_t size = take_uint(&in, 8, "a file's size");
        int kind = (int)take_uint(&in, 1, "a file's kind");
        char *slash = strrchr(path, '/');
        struct node *parent = root;
        if (slash != path) {
            *slash = 0;
            parent = folder(path);
            *slash = '/';
        }
        struct node *n = new_node(path, 0);
        n->number = i;
        n->size = size;
        if (kind == 0) {
            n->stored = 1;
            n->object = (uint32_t)take_uint(&in, 4, "a file's object number");
            n->object_file = take_text(&in, "a file's object file");
            n->base = take_uint(&in, 8, "a file's offset");
            n->length = take_uint(&in, 8, "a file's object length");
            size_t sl = strlen(store_id), pl = strlen(rel);
            n->aad_len = sizeof LABEL + sl + 1 + pl + 1;
            n->aad = malloc(n->aad_len);
            if (!n->aad)
                die("out of memory building the tree");
            memcpy(n->aad, LABEL, sizeof LABEL); /* with its NUL */
            memcpy(n->aad + sizeof LABEL, store_id, sl + 1);
            memcpy(n->aad + sizeof LABEL + sl + 1, rel, pl + 1);
        } else {
            n->content = malloc(size ? size : 1);
            if (!n->content)
                die("out of memory for %s", rel);
            memcpy(n->content, take(&in, size, "a file's content"), size);
        }
        add_child(parent, n);
        total_files++;
        total_bytes += size;
        free(path);
        free(rel);
    }
    if (in.p != in.end)
        die("the table on standard input has %zu bytes too many", (size_t)(in.end - in.p));
    OPENSSL_cleanse(buf, len);
    free(buf);
    for (size_t h = 0; h < table_size; h++)
        for (struct node *n = table[h]; n; n = n->next)
            if (n->is_dir && n->nchildren)
                qsort(n->children, n->nchildren, sizeof *n->children, by_name);
}

/* ---- per-thread decryption state: a cipher context keyed once, and scratch buffers */

struct worker {
    EVP_CIPHER_CTX *ctx;
    unsigned char *records; /* ciphertext records of one read */
    size_t records_cap;
    unsigned char *plain; /* one segment, for reads that start or end inside it */
};

static void worker_free(void *p)
{
    struct worker *w = p;
    EVP_CIPHER_CTX_free(w->ctx); /* cleanses the key schedule */
    free(w->records);
    if (w->plain)
        OPENSSL_cleanse(w->plain, seg_size);
    free(w->plain);
    free(w);
}

static struct worker *worker(void)
{
    struct worker *w = pthread_getspecific(thread_key);
    if (w)
        return w;
    w = calloc(1, sizeof *w);
    if (!w || !(w->ctx = EVP_CIPHER_CTX_new()) || !(w->plain = malloc(seg_size)))
        return NULL;
    if (EVP_DecryptInit_ex(w->ctx, EVP_aes_256_gcm(), NULL, data_key, NULL) != 1) {
        worker_free(w);
        return NULL;
    }
    pthread_setspecific(thread_key, w);
    return w;
}

/* Decrypt and authenticate one segment's ciphertext into out; 0 when it is genuine. */
static int open_segment(struct worker *w, const struct node *n, uint64_t index, int last,
                        const unsigned char *ct, size_t len, unsigned char *out)
{
    unsigned char iv[12], tail[9];
    int outl = 0, finl = 0;
    iv[0] = (unsigned char)(n->object >> 24);
    iv[1] = (unsigned char)(n->object >> 16);
    iv[2] = (unsigned char)(n->object >> 8);
    iv[3] = (unsigned char)n->object;
    for (int i = 0; i < 8; i++)
        iv[4 + i] = tail[i] = (unsigned char)(index >> (56 - 8 * i));
    tail[8] = (unsigned char)last;
    if (EVP_DecryptInit_ex(w->ctx, NULL, NULL, NULL, iv) != 1 ||
        EVP_DecryptUpdate(w->ctx, NULL, &outl, n->aad, (int)n->aad_len) != 1 ||
        EVP_DecryptUpdate(w->ctx, NULL, &outl, tail, sizeof tail) != 1 ||
        (len && EVP_DecryptUpdate(w->ctx, out, &outl, ct, (int)len) != 1) ||
        EVP_CIPHER_CTX_ctrl(w->ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, (void *)(ct + len)) != 1)
        return -1;
    return EVP_DecryptFinal_ex(w->ctx, out + outl, &finl) == 1 ? 0 : -1;
}

/* ---- FUSE operations */

static void *op_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    (void)conn;
    cfg->kernel_cache = 1;
    cfg->entry_timeout = CACHE_SECONDS;
    cfg->attr_timeout = CACHE_SECONDS;
    cfg->negative_timeout = CACHE_SECONDS;
    cfg->nullpath_ok = 1; /* reads and releases use the handle: no path to build */
    say("ready\n");
    return NULL;
}

static void fill_stat(const struct node *n, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_uid = 0;
    st->st_gid = 0;
    st->st_atim = st->st_mtim = st->st_ctim = mtime;
    if (n->is_dir) {
        st->st_mode = S_IFDIR | 0555;
        st->st_nlink = 2 + n->subdirs;
        st->st_size = 4096;
    } else {
        st->st_mode = S_IFREG | 0444;
        st->st_nlink = 1;
        st->st_size = (off_t)n->size;
        st->st_blocks = (blkcnt_t)((n->size + 511) / 512);
    }
}

static int op_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    const struct node *n = fi && fi->fh ? ((struct handle *)(uintptr_t)fi->fh)->node
                           : path ? find(path) : NULL;
    if (!n)
        return -ENOENT;
    fill_stat(n, st);
    return 0;
}

static int op_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t offset,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    (void)path;
    (void)offset;
    (void)flags;
    const struct node *n = ((struct handle *)(uintptr_t)fi->fh)->node;
    if (!n)
        return -ENOENT;
    if (!n->is_dir)
        return -ENOTDIR;
    fill(buf, ".", NULL, 0, 0);
    fill(buf, "..", NULL, 0, 0);
    for (size_t i = 0; i < n->nchildren; i++)
        if (fill(buf, n->children[i]->name, NULL, 0, 0))
            break;
    return 0;
}

/* Folders get a handle too: with nullpath_ok libfuse may pass readdir no path. */
static int op_opendir(const char *path, struct fuse_file_info *fi)
{
    struct node *n = find(path);
    if (!n)
        return -ENOENT;
    if (!n->is_dir)
        return -ENOTDIR;
    struct handle *h = malloc(sizeof *h);
    if (!h)
        return -ENOMEM;
    h->node = n;
    h->fd = -1;
    fi->fh = (uint64_t)(uintptr_t)h;
    return 0;
}

static int op_releasedir(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    free((struct handle *)(uintptr_t)fi->fh);
    return 0;
}

static int op_statfs(const char *path, struct statvfs *st)
{
    (void)path;
    memset(st, 0, sizeof *st);
    st->f_bsize = st->f_frsize = 4096;
    st->f_blocks = (fsblkcnt_t)((total_bytes + 4095) / 4096);
    st->f_files = (fsfilcnt_t)total_files;
    st->f_namemax = 255;
    return 0;
}

static uint64_t object_length(uint64_t size)
{
    uint64_t records = size ? (size + seg_size - 1) / seg_size : 1;
    return MAGIC_LEN + size + records * (SEG_HEADER + TAG_LEN);
}

static int op_open(const char *path, struct fuse_file_info *fi)
{
    if (fi->flags & (O_WRONLY | O_RDWR | O_TRUNC | O_APPEND))
        return -EROFS;
    struct node *n = find(path);
    if (!n)
        return -ENOENT;
    if (n->is_dir)
        return -EISDIR;
    struct handle *h = malloc(sizeof *h);
    if (!h)
        return -ENOMEM;
    h->node = n;
    h->fd = -1;
    if (n->stored) {
        if (n->length != object_length(n->size)) {
            fault("fault %u object %llu\n", n->number, (unsigned long long)object_length(n->size));
            free(h);
            return -EIO;
        }
        h->fd = open(n->object_file, O_RDONLY | O_CLOEXEC);
        if (h->fd < 0) {
            fault("fault %u open %d\n", n->number, errno);
            free(h);
            return -EIO;
        }
    }
    fi->fh = (uint64_t)(uintptr_t)h;
    fi->keep_cache = 1;
    return 0;
}

static int op_release(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    struct handle *h = (struct handle *)(uintptr_t)fi->fh;
    if (h->fd >= 0)
        close(h->fd);
    free(h);
    return 0;
}

/* Decrypt [offset, offset+size) into buf, libfuse's reply buffer: whole segments in place,
 * the partial ones at either end through the worker's one-segment scratch. */
static int op_read(const char *path, char *buf, size_t size, off_t offset,
                   struct fuse_file_info *fi)
{
    (void)path;
    const struct handle *h = (struct handle *)(uintptr_t)fi->fh;
    const struct node *n = h->node;
    uint64_t off = (uint64_t)offset;
    uint64_t end = off + size < n->size ? off + size : n->size;
    if (offset < 0 || end <= off)
        return 0;
    if (!n->stored) {
        memcpy(buf, n->content + off, end - off);
        return (int)(end - off);
    }
    struct worker *w = worker();
    if (!w)
        return -ENOMEM;
    uint64_t record = SEG_HEADER + (uint64_t)seg_size + TAG_LEN;
    uint64_t segments = n->size ? (n->size + seg_size - 1) / seg_size : 1;
    uint64_t first = off / seg_size, last = (end - 1) / seg_size;
    uint64_t start = n->base + MAGIC_LEN + first * record;
    uint64_t want = (last - first + 1) * record;
    if (want > n->base + n->length - start)
        want = n->base + n->length - start;
    if (want > w->records_cap) {
        free(w->records);
        w->records = malloc(want);
        w->records_cap = w->records ? want : 0;
        if (!w->records)
            return -ENOMEM;
    }
    for (uint64_t got = 0; got < want;) {
        ssize_t r = pread(h->fd, w->records + got, want - got, (off_t)(start + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            fault("fault %u %s %d\n", n->number, r < 0 ? "io" : "truncated", r < 0 ? errno : 0);
            return -EIO;
        }
        got += (uint64_t)r;
    }
    uint64_t at = 0;
    for (uint64_t index = first; index <= last; index++) {
        int final = index == segments - 1;
        uint64_t plain = final ? n->size - index * seg_size : seg_size;
        const unsigned char *rec = w->records + at;
        uint32_t length = (uint32_t)rec[0] << 24 | (uint32_t)rec[1] << 16 |
                          (uint32_t)rec[2] << 8 | rec[3];
        if (length != plain + TAG_LEN || !!(rec[4] & FLAG_LAST) != final ||
            at + SEG_HEADER + length > want) {
            fault("fault %u length %llu\n", n->number, (unsigned long long)index);
            return -EIO;
        }
        const unsigned char *ct = rec + SEG_HEADER;
        uint64_t seg_start = index * seg_size;
        uint64_t lo = off > seg_start ? off : seg_start;
        uint64_t hi = end < seg_start + plain ? end : seg_start + plain;
        int whole = lo == seg_start && hi == seg_start + plain;
        /* A failed tag leaves unauthenticated bytes in buf; they are never sent (EIO). */
        unsigned char *into = whole ? (unsigned char *)buf + (lo - off) : w->plain;
        if (open_segment(w, n, index, final, ct, plain, into) != 0) {
            fault("fault %u auth %llu\n", n->number, (unsigned long long)index);
            return -EIO;
        }
        if (!whole) {
            memcpy(buf + (lo - off), w->plain + (lo - seg_start), hi - lo);
            OPENSSL_cleanse(w->plain, plain);
        }
        at += SEG_HEADER + length;
    }
    return (int)(end - off);
}

static const struct fuse_operations ops = {
    .init = op_init,
    .getattr = op_getattr,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .releasedir = op_releasedir,
    .statfs = op_statfs,
    .open = op_open,
    .read = op_read,
    .release = op_release,
};

int main(void)
{
    /* The key must not reach a core file, and we must not outlive the daemon that supervises
     * us: it reports our faults, and the hub counts a killed daemon as a dead mount. */
    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none);
    if (prctl(PR_SET_DUMPABLE, 0) != 0 || prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        die("prctl failed: %s", strerror(errno));
    if (getppid() == 1)
        die("the supervising daemon is gone");
    /* libfuse mallocs a reply buffer for every read and frees it after replying: keep
     * buffers of up to a few MiB on the heap, where they are reused, instead of mapping fresh
     * zeroed pages (256 page faults per 1 MiB read) and unmapping them each time. */
    mallopt(M_MMAP_THRESHOLD, 8 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    mlock(data_key, sizeof data_key);
    read_table();
    if (pthread_key_create(&thread_key, worker_free) != 0)
        die("pthread_key_create failed");

    char *argv[] = {
        "enclave-datafs", "-o",
        "ro,allow_other,default_permissions,nosuid,nodev,noexec,"
        "fsname=enclave-datafs,subtype=enclave",
        NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, argv);
    struct fuse *fuse = fuse_new(&args, &ops, sizeof ops, NULL);
    if (!fuse)
        die("could not set up the filesystem for %s", mountpoint);
    if (fuse_mount(fuse, mountpoint) != 0) {
        fuse_destroy(fuse);
        die("could not mount at %s", mountpoint);
    }
    struct fuse_session *se = fuse_get_session(fuse);
    if (fuse_set_signal_handlers(se) != 0)
        die("could not set the signal handlers");
    struct fuse_loop_config *loop = fuse_loop_cfg_create();
    if (!loop)
        die("out of memory for the loop configuration");
    fuse_loop_cfg_set_clone_fd(loop, 0);
    fuse_loop_cfg_set_idle_threads(loop, 10);
    int rc = fuse_loop_mt(fuse, loop);
    fuse_loop_cfg_destroy(loop);
    fuse_remove_signal_handlers(se);
    fuse_unmount(fuse);
    fuse_destroy(fuse);
    OPENSSL_cleanse(data_key, sizeof data_key);
    fuse_opt_free_args(&args);
    return rc == 0 ? 0 : 1;
}
