// The minimal fake browser the live harnesses run static/track.js in (node:vm): the globals
// track.js reads, with `document`, `location`, `navigator` and any others (fetch, WebSocket)
// given by the harness. Returns the window; track.js's API is `win.sfpl`. The helpers below give
// a harness what a browser does with the tracker's cookies: a jar, fetch and WebSocket using it.
import crypto, { webcrypto } from 'node:crypto';
import http from 'node:http';
import vm from 'node:vm';

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

// A browser's cookie jar for the tracker's origin (names and values; a Max-Age <= 0 deletes).
export function cookieJar() {
  const jar = new Map();
  return {
    jar,
    header() {
      return [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
    },
    store(setCookies) {
      for (const raw of setCookies || []) {
        const [pair, ...attrs] = raw.split(';').map((s) => s.trim());
        const i = pair.indexOf('=');
        if (i < 1) continue;
        const maxAge = attrs.find((a) => /^max-age=/i.test(a));
        if (maxAge && Number(maxAge.split('=')[1]) <= 0) jar.delete(pair.slice(0, i));
        else jar.set(pair.slice(0, i), pair.slice(i + 1));
      }
    },
  };
}

// fetch as a browser does it for the tracker's origin: the jar's cookies go with credentialed
// requests and the answer's Set-Cookie lands in the jar; `headers` (e.g. Sec-GPC) go with all.
export function browserFetch(cookies, headers = {}, log = []) {
  return (url, init = {}) => {
    const h = new Headers(init.headers || {});
    const withCookies = init.credentials !== 'omit';
    if (withCookies && cookies.header()) h.set('Cookie', cookies.header());
    for (const [k, v] of Object.entries(headers)) h.set(k, v);
    log.push({ url: String(url), method: init.method || 'GET', cookie: h.get('Cookie') });
    return fetch(url, { ...init, headers: h, keepalive: false }).then((res) => {
      if (withCookies) cookies.store(res.headers.getSetCookie());
      return res;
    });
  };
}

// A browser's WebSocket, over node:http: what matters here is what a browser does at the
// upgrade, which Node's own WebSocket does not: it sends the jar's cookies (and `headers`, e.g.
// Sec-GPC) and keeps the Set-Cookie of the 101 answer. Enough of RFC 6455 for track.js:
// masked text/binary frames out, unfragmented text frames in, ping, close.
export function browserWebSocket(cookies, headers = {}, opened = []) {
  return class WebSocket {
    constructor(url) {
      opened.push(this);
      this.url = url;
      this.readyState = 0;
      this.bufferedAmount = 0;
      this.binaryType = 'blob';
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      this._buf = Buffer.alloc(0);
      this._ended = false;
      const u = new URL(url.replace(/^ws/, 'http'));
      const h = {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': crypto.randomBytes(16).toString('base64'),
        ...headers,
      };
      if (cookies.header()) h.Cookie = cookies.header();
      const req = http.request({ hostname: u.hostname, port: u.port, path: u.pathname + u.search, headers: h });
      req.on('upgrade', (res, socket, head) => {
        this.setCookies = res.headers['set-cookie'] || [];
        cookies.store(this.setCookies);
        this._socket = socket;
        this.readyState = 1;
        socket.on('data', (d) => this._data(d));
        socket.on('close', () => this._end());
        socket.on('error', noop);
        this._emit('onopen', {});
        if (head && head.length) this._data(head);
      });
      req.on('response', (res) => {
        res.resume();
        this._end();
      });
      req.on('error', () => this._end());
      req.end();
    }

    _emit(name, event) {
      try {
        if (typeof this[name] === 'function') this[name](event);
      } catch (e) {
        /* a browser reports handler errors, it does not stop */
      }
    }

    _frame(opcode, payload) {
      const len = payload.length;
      let head;
      if (len < 126) {
        head = Buffer.from([0x80 | opcode, 0x80 | len]);
      } else if (len < 65536) {
        head = Buffer.alloc(4);
        head[0] = 0x80 | opcode;
        head[1] = 0x80 | 126;
        head.writeUInt16BE(len, 2);
      } else {
        head = Buffer.alloc(10);
        head[0] = 0x80 | opcode;
        head[1] = 0x80 | 127;
        head.writeBigUInt64BE(BigInt(len), 2);
      }
      const mask = crypto.randomBytes(4);
      const body = Buffer.from(payload);
      for (let i = 0; i < len; i++) body[i] ^= mask[i % 4];
      this._socket.write(Buffer.concat([head, mask, body]));
    }

    send(data) {
      if (this.readyState !== 1) throw new Error('WebSocket is not open');
      this._frame(typeof data === 'string' ? 1 : 2, Buffer.from(data));
    }

    close(code = 1000) {
      if (this.readyState >= 2) return;
      if (this.readyState === 0) return this._end();
      this.readyState = 2;
      const payload = Buffer.alloc(2);
      payload.writeUInt16BE(code);
      this._frame(8, payload);
      this._socket.end();
    }

    _data(d) {
      this._buf = Buffer.concat([this._buf, d]);
      while (this._buf.length >= 2) {
        const opcode = this._buf[0] & 0x0f;
        let len = this._buf[1] & 0x7f;
        let off = 2;
        if (len === 126) {
          if (this._buf.length < 4) return;
          len = this._buf.readUInt16BE(2);
          off = 4;
        } else if (len === 127) {
          if (this._buf.length < 10) return;
          len = Number(this._buf.readBigUInt64BE(2));
          off = 10;
        }
        if (this._buf.length < off + len) return;
        const payload = this._buf.subarray(off, off + len);
        this._buf = this._buf.subarray(off + len);
        if (opcode === 1) this._emit('onmessage', { data: payload.toString('utf8') });
        else if (opcode === 9 && this.readyState === 1) this._frame(10, payload);
        else if (opcode === 8) {
          if (this.readyState === 1) {
            this.readyState = 2;
            this._frame(8, payload.subarray(0, 2));
          }
          this._socket.end();
        }
      }
    }

    _end() {
      if (this._ended) return;
      this._ended = true;
      this.readyState = 3;
      this._emit('onclose', { code: 1006 });
    }
  };
}
