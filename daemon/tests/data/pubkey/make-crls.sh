#!/bin/sh
# Makes the CRL test fixtures of daemon/tests/data/pubkey with OpenSSL 3:
# crl-ca.pem / crl-ca.key (an Ed25519 test CA, its key only for this
# script), crl.pem (PEM "X509 CRL", serials 1001 keyCompromise and 1002
# superseded, nextUpdate in 2126) and crl-expired.der (DER, serial 1003,
# nextUpdate 2026-01-02). Run in this directory: sh make-crls.sh
set -eu
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/ca.cnf" <<CNF
[ca]
default_ca = test
[test]
database = $work/index.txt
crlnumber = $work/crlnumber
default_md = default
crl_extensions = crl_ext
[crl_ext]
authorityKeyIdentifier = keyid:always
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = aokd-test-crl-ca
[v3_ca]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
CNF
[ -f crl-ca.key ] || openssl genpkey -algorithm ed25519 -out crl-ca.key
openssl req -new -x509 -config "$work/ca.cnf" -key crl-ca.key -days 36500 -out crl-ca.pem
# index.txt: status, expiry, revocation time,reason, serial, file, subject.
printf 'R\t21261231000000Z\t260401000000Z,keyCompromise\t1001\tunknown\t/CN=r9\n' > "$work/index.txt"
printf 'R\t21261231000000Z\t260402000000Z,superseded\t1002\tunknown\t/CN=r8\n' >> "$work/index.txt"
echo 01 > "$work/crlnumber"
openssl ca -config "$work/ca.cnf" -gencrl -keyfile crl-ca.key -cert crl-ca.pem \
    -crldays 36500 -out crl.pem
printf 'R\t21261231000000Z\t251201000000Z,cessationOfOperation\t1003\tunknown\t/CN=r7\n' > "$work/index.txt"
openssl ca -config "$work/ca.cnf" -gencrl -keyfile crl-ca.key -cert crl-ca.pem \
    -crl_lastupdate 20251201000000Z -crl_nextupdate 20260102000000Z -out "$work/old.pem"
openssl crl -in "$work/old.pem" -outform DER -out crl-expired.der
