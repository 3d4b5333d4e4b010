"""Verify every DKIM-Signature of a message with dkimpy, DNS from a file.

usage: dkimpy_verify.py MESSAGE RECORDS
RECORDS holds lines "name<TAB>value" (name without the trailing dot).
Prints one line per signature, "PASS" or "FAIL", and exits 1 on any FAIL.
"""
import sys

import dkim

msg = open(sys.argv[1], "rb").read()
records = {}
for line in open(sys.argv[2], encoding="ascii"):
    name, value = line.rstrip("\n").split("\t", 1)
    records[name.rstrip(".").lower()] = value.encode("ascii")


def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode("ascii")
    return records.get(name.rstrip(".").lower())


d = dkim.DKIM(msg)
n = sum(1 for k, _ in d.headers if k.lower() == b"dkim-signature")
if n == 0:
    print("FAIL no signature")
    sys.exit(1)
failed = False
for i in range(n):
    try:
        ok = d.verify(idx=i, dnsfunc=dnsfunc)
        why = ""
    except dkim.DKIMException as e:
        ok, why = False, str(e)
    sig = dict(d.signature_fields) if ok or d.signature_fields else {}
    tag = "d=%s s=%s a=%s" % (
        sig.get(b"d", b"?").decode(), sig.get(b"s", b"?").decode(), sig.get(b"a", b"?").decode())
    print(("PASS " if ok else "FAIL ") + tag + (" " + why if why else ""))
    failed = failed or not ok
sys.exit(1 if failed else 0)
