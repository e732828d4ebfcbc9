"""Receiver-side check of X-DZDESK-Signature, written the way the DZDESK
webhook documentation tells integrators to (Security > Verifying Signature).

    python3 verify.py BODY_FILE SECRET_FILE SIGNATURE

The documented function takes the payload as text and encodes it, so the
body file is read as bytes and decoded as strict UTF-8 (no newline
translation); for a UTF-8 body payload.encode() gives back the exact bytes
received. The secret file is read as UTF-8 text. Prints true or false and
exits 0; exits 2 on a usage error. Used by signer/interop_test.go.
"""

import hashlib
import hmac
import sys


# Copied from the documentation.
def verify_webhook(payload, signature, secret):
    expected = hmac.new(
        secret.encode(),
        payload.encode(),
        hashlib.sha256
    ).hexdigest()

    return f"sha256={expected}" == signature


def main(argv):
    if len(argv) != 4:
        print("usage: python3 verify.py BODY_FILE SECRET_FILE SIGNATURE", file=sys.stderr)
        return 2
    _, body_file, secret_file, signature = argv
    with open(body_file, "rb") as f:
        payload = f.read().decode("utf-8")
    with open(secret_file, "rb") as f:
        secret = f.read().decode("utf-8")
    print("true" if verify_webhook(payload, signature, secret) else "false")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
