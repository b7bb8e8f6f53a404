'use strict';
// Starts the real guestgate binary (built by `cargo build` in the repo root)
// on loopback ports, pointed at a given upstream, and stops it again.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');

// Every guestgate this process started and has not stopped yet: killed when
// the process exits (a failed or timed-out test must not leave one running).
const running = new Set();
process.on('exit', () => {
  for (const p of running) p.kill('SIGKILL');
});

function guestgateBin() {
  if (process.env.GUESTGATE_BIN) return process.env.GUESTGATE_BIN;
  const targetDir = process.env.CARGO_TARGET_DIR
    ? path.resolve(REPO_ROOT, process.env.CARGO_TARGET_DIR)
    : path.join(REPO_ROOT, 'target');
  return path.join(targetDir, 'debug', 'guestgate');
}

function tomlString(s) {
  return JSON.stringify(String(s)); // ASCII JSON strings are valid TOML basic strings
}

// A bare key stays bare; anything else (a JSON Pointer such as "/action") is quoted.
function tomlKey(k) {
  return /^[A-Za-z0-9_-]+$/.test(k) ? k : tomlString(k);
}

function tomlValue(v) {
  if (Array.isArray(v)) return `[${v.map(tomlValue).join(', ')}]`;
  if (typeof v === 'string') return tomlString(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (v && typeof v === 'object') {
    return `{ ${Object.entries(v).map(([k, x]) => `${tomlKey(k)} = ${tomlValue(x)}`).join(', ')} }`;
  }
  throw new Error(`cannot write ${v} as TOML`);
}

function renderConfig(sections) {
  return Object.entries(sections)
    .map(([name, keys]) => `[${name}]\n${Object.entries(keys).map(([k, v]) => `${tomlKey(k)} = ${tomlValue(v)}`).join('\n')}\n`)
    .join('\n');
}

// An array of tables, e.g. [[websocket_rules]]: each entry's plain values as
// `key = value` lines (the keys named in `inline`, e.g. `when`, as inline
// tables), its other object values as sub-tables ([websocket_rules.allow]).
function renderTableArray(name, entries, { inline = ['when'] } = {}) {
  return entries.map((entry) => {
    const lines = [`[[${name}]]`];
    const subTables = [];
    for (const [k, v] of Object.entries(entry)) {
      if (v && typeof v === 'object' && !Array.isArray(v) && !inline.includes(k)) subTables.push([k, v]);
      else lines.push(`${tomlKey(k)} = ${tomlValue(v)}`);
    }
    for (const [k, v] of subTables) {
      lines.push(`[${name}.${tomlKey(k)}]`);
      for (const [kk, vv] of Object.entries(v)) lines.push(`${tomlKey(kk)} = ${tomlValue(vv)}`);
    }
    return `${lines.join('\n')}\n`;
  }).join('\n');
}

// The listener and admin addresses from the "guestgate listening" log line
// (JSON logs), once the binary has written it: both listen on port 0, so no
// port is chosen before guestgate binds it and no other process can take it.
function listening(output) {
  for (const line of output.split('\n')) {
    let entry;
    try { entry = JSON.parse(line); } catch { continue; }
    if (!entry || entry.message !== 'guestgate listening') continue;
    const admin = /^Some\((.+)\)$/.exec(entry.admin || '');
    if (typeof entry.addr === 'string' && admin) return { addr: entry.addr, admin: admin[1] };
  }
  return null;
}

// start({ upstreamUrl, to = { id: 'queue-123' }, cors, extra, tableArrays }) -> running guestgate
// `extra` adds or extends sections (`{ 'upstreams.webmessaging': { base_url } }`);
// `tableArrays` appends arrays of tables (`{ websocket_rules: [{ name, path, … }] }`).
async function startGuestgate({ upstreamUrl, to = { id: 'queue-123' }, cors, extra, tableArrays }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'guestgate-clients-'));
  const config = {
    server: { listen: '127.0.0.1:0' },
    upstream: { base_url: upstreamUrl },
    guest_messages: { to },
    admin: { listen: '127.0.0.1:0' },
    log: { level: process.env.GUESTGATE_TEST_LOG || 'info', format: 'json' },
  };
  if (cors) config.cors = cors;
  for (const [section, keys] of Object.entries(extra || {})) config[section] = { ...(config[section] || {}), ...keys };
  const configPath = path.join(dir, 'guestgate.toml');
  let text = renderConfig(config);
  for (const [name, entries] of Object.entries(tableArrays || {})) text += `\n${renderTableArray(name, entries)}`;
  fs.writeFileSync(configPath, text);

  // Only this test's config applies: no GUESTGATE__* or RUST_LOG from the caller.
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('GUESTGATE__') && k !== 'RUST_LOG') env[k] = v;
  }
  const bin = guestgateBin();
  if (!fs.existsSync(bin)) {
    throw new Error(`guestgate binary not found at ${bin}: run \`cargo build\` in ${REPO_ROOT} (tests/clients/run.sh does) or set GUESTGATE_BIN`);
  }
  const proc = spawn(bin, ['--config', configPath], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(proc);
  proc.once('exit', () => running.delete(proc));
  let output = '';
  proc.stdout.on('data', (d) => { output += d; });
  proc.stderr.on('data', (d) => { output += d; });
  let exited = null;
  const exitPromise = new Promise((r) => proc.once('exit', (code, signal) => { exited = { code, signal }; r(exited); }));

  const deadline = Date.now() + 20000;
  while (Date.now() < deadline) {
    if (exited) break;
    const addrs = listening(output);
    if (addrs) {
      const port = Number(addrs.addr.slice(addrs.addr.lastIndexOf(':') + 1));
      return {
        url: `http://${addrs.addr}`,
        port,
        adminUrl: `http://${addrs.admin}`,
        configPath,
        configText: text,
        proc,
        output: () => output,
        async stop() {
          if (!exited) {
            proc.kill('SIGTERM');
            const t = setTimeout(() => { if (!exited) proc.kill('SIGKILL'); }, 5000);
            await exitPromise;
            clearTimeout(t);
          }
          fs.rmSync(dir, { recursive: true, force: true });
        },
      };
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  if (!exited) { proc.kill('SIGKILL'); await exitPromise; }
  fs.rmSync(dir, { recursive: true, force: true });
  throw new Error(`guestgate did not become ready (exit: ${JSON.stringify(exited)})\nconfig:\n${text}\noutput:\n${output}`);
}

module.exports = { startGuestgate, guestgateBin, renderConfig, renderTableArray, REPO_ROOT };
