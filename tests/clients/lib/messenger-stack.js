'use strict';
// Starts the Web-Messaging-like upstream and guestgate in front of it with the
// messenger WebSocket rules (lib/messenger.js), for a test written in another
// language (the Python messenger test). Prints one JSON line
// {"upstream": URL, "guestgate": URL, "ws": URL, "deploymentId": ID,
//  "clientDeploymentId": ID, "config": TEXT} once both accept connections; the
// upstream's recordings are at GET <upstream>/__upstream__/connections. Stops
// both when its stdin closes or on SIGTERM/SIGINT.
//
//   node lib/messenger-stack.js [--max-message-bytes 65536]

const { startMessengerStack, CLIENT_DEPLOYMENT_ID } = require('./messenger');

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
}

async function main() {
  const stack = await startMessengerStack({ maxMessageBytes: Number(arg('--max-message-bytes', '65536')) });
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await stack.stop();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  process.stdin.resume();
  process.stdout.write(`${JSON.stringify({
    upstream: stack.upstream.url,
    guestgate: stack.guestgate.url,
    ws: stack.wsUrl,
    deploymentId: stack.deploymentId,
    clientDeploymentId: CLIENT_DEPLOYMENT_ID,
    config: stack.guestgate.configText,
  })}\n`);
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
