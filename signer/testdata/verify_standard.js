// Receiver-side check of the Standard Webhooks headers with the reference
// library (npm standardwebhooks): new Webhook(secret).verify(payload, headers).
//
//   node verify_standard.js [--raw] BODY_FILE SECRET_FILE WEBHOOK_ID WEBHOOK_TIMESTAMP WEBHOOK_SIGNATURE
//
// BODY_FILE holds the raw request body, passed to verify() as a Buffer.
// SECRET_FILE holds the secret: a whsec_ secret by default; with --raw its
// bytes are the key (new Webhook(buffer, {format: 'raw'})), which is how a
// receiver uses a dzhook secret without the whsec_ prefix. The library
// checks the timestamp against the real clock (5 minutes either way).
// Prints true or false and exits 0; exits 2 on a usage error and 1 on any
// error other than a failed verification. Used by signer/interop_test.go.
'use strict';

const fs = require('fs');
const path = require('path');
// Resolve the library next to this script, whatever the working directory.
const { Webhook, WebhookVerificationError } = require(path.join(__dirname, 'node_modules', 'standardwebhooks'));

let args = process.argv.slice(2);
const raw = args[0] === '--raw';
if (raw) {
  args = args.slice(1);
}
if (args.length !== 5) {
  process.stderr.write('usage: node verify_standard.js [--raw] BODY_FILE SECRET_FILE WEBHOOK_ID WEBHOOK_TIMESTAMP WEBHOOK_SIGNATURE\n');
  process.exit(2);
}
const [bodyFile, secretFile, id, timestamp, signature] = args;
const payload = fs.readFileSync(bodyFile);
const wh = raw
  ? new Webhook(fs.readFileSync(secretFile), { format: 'raw' })
  : new Webhook(fs.readFileSync(secretFile, 'utf8'));
const headers = {
  'webhook-id': id,
  'webhook-timestamp': timestamp,
  'webhook-signature': signature,
};

try {
  wh.verify(payload, headers);
  console.log('true');
} catch (err) {
  if (!(err instanceof WebhookVerificationError)) {
    throw err;
  }
  process.stderr.write(`${err.message}\n`);
  console.log('false');
}
