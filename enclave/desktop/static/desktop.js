// The desktop page: one noVNC client filling the window. The remote desktop follows the
// window's size, keys go to the desktop as they are typed, and a dropped connection comes
// back by itself. The page never touches the clipboard: the gateway and the VNC server would
// refuse it anyway.
import RFB from "./../novnc/core/rfb.js";

const prefix = document.documentElement.dataset.prefix;
const status = document.getElementById("status");
const screen = document.getElementById("screen");
const scheme = location.protocol === "https:" ? "wss:" : "ws:";
const url = `${scheme}//${location.host}${prefix}websockify`;
let retry = 0;

function say(text, kind) {
  status.textContent = text;
  status.className = kind || "";
}

function connect() {
  const rfb = new RFB(screen, url);
  rfb.resizeSession = true;   // the desktop takes the window's size
  rfb.scaleViewport = false;
  rfb.clipViewport = false;
  rfb.focusOnClick = true;
  rfb.qualityLevel = 8;
  rfb.compressionLevel = 1;
  rfb.addEventListener("connect", () => {
    retry = 0;
    say("Connected", "connected");
    rfb.focus();
  });
  rfb.addEventListener("disconnect", (event) => {
    const wait = Math.min(10, 2 ** retry);
    retry += 1;
    say(event.detail.clean ? "Desktop closed; reconnecting\u2026"
                           : `Connection lost; reconnecting in ${wait} s\u2026`, "problem");
    setTimeout(connect, wait * 1000);
  });
  window.enclaveDesktop = rfb;  // for tests and the benchmark
}

connect();
