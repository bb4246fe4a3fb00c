// The minimal fake browser the live harnesses run static/track.js in (node:vm): the globals
// track.js reads, with `document`, `location`, `navigator` and any others (fetch, WebSocket)
// given by the harness. Returns the window; track.js's API is `win.sfpl`.
import vm from 'node:vm';
import { webcrypto } from 'node:crypto';

const noop = () => {};

export function runTrackJs(code, globals) {
  const win = {
    innerWidth: 1280,
    innerHeight: 800,
    sessionStorage: { getItem: () => null, setItem: noop, removeItem: noop },
    localStorage: { getItem: () => null, setItem: noop, removeItem: noop },
    crypto: webcrypto,
    console,
    setTimeout,
    clearTimeout,
    URL,
    Blob,
    TextEncoder,
    addEventListener: noop,
    ...globals,
  };
  win.window = win;
  vm.createContext(win);
  vm.runInContext(code, win, { filename: 'track.js' });
  return win;
}
