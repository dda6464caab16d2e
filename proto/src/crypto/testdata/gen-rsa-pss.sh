#!/bin/sh
# Makes the RSA-PSS fixtures of crypto::sig's tests once (aokd signs with
# Ed25519 and ECDSA only; RSA-PSS is verified): a 2048-bit public key as
# SubjectPublicKeyInfo DER and an RSASSA-PSS SHA-256 / MGF1-SHA-256 / 32-octet
# salt signature over the octets of rsa-pss-message.txt. Run in this folder.
set -eu
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key.pem
openssl pkey -in rsa.key.pem -pubout -outform DER -out rsa-spki.der
printf 'InitiatorSignedOctets of a test' > rsa-pss-message.txt
openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32 \
    -sigopt rsa_mgf1_md:sha256 -sign rsa.key.pem -out rsa-pss.sig rsa-pss-message.txt
rm rsa.key.pem
