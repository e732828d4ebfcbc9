// Receiver-side check of X-DZDESK-Signature, written the way the DZDESK
// webhook documentation tells integrators to (Security > Verifying Signature).
//
//   node verify.js BODY_FILE SECRET_FILE SIGNATURE
//
// BODY_FILE holds the raw request body and is read as a Buffer, the raw
// bytes (what express.raw() hands over); SECRET_FILE holds the secret as
// configured, read as UTF-8 text. Prints true or false and exits 0; exits 2
// on a usage error. Used by signer/interop_test.go.
'use strict';

const crypto = require('crypto');
const fs = require('fs');

// Copied from the documentation.
function verifyWebhook(payload, signature, secret) {
  const expected = crypto
    .createHmac('sha256', secret)
    .update(payload)
    .digest('hex');

  return `sha256=${expected}` === signature;
}

const args = process.argv.slice(2);
if (args.length !== 3) {
  process.stderr.write('usage: node verify.js BODY_FILE SECRET_FILE SIGNATURE\n');
  process.exit(2);
}
const [bodyFile, secretFile, signature] = args;
const payload = fs.readFileSync(bodyFile);
const secret = fs.readFileSync(secretFile, 'utf8');
console.log(String(verifyWebhook(payload, signature, secret)));
