'use strict';
// Starts the loopback upstream and guestgate in front of it for a test written
// in another language (the Python test). Prints one JSON line
// {"upstream": URL, "guestgate": URL} once both accept connections; the
// upstream's recordings are at GET <upstream>/__upstream__/requests. Stops both
// when its stdin closes or on SIGTERM/SIGINT.
//
//   node lib/stack.js [--to-id queue-123]

const { startUpstream } = require('./upstream');
const { startGuestgate } = require('./guestgate');

async function main() {
  const i = process.argv.indexOf('--to-id');
  const toId = i > 0 ? process.argv[i + 1] : 'queue-123';
  const upstream = await startUpstream();
  let gg;
  try {
    gg = await startGuestgate({ upstreamUrl: upstream.url, to: { id: toId } });
  } catch (e) {
    await upstream.close();
    throw e;
  }
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await gg.stop();
    await upstream.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  process.stdin.resume();
  process.stdout.write(`${JSON.stringify({ upstream: upstream.url, guestgate: gg.url })}\n`);
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
