#!/usr/bin/env bash
# Makes the certificates of a secured ank-zenoh deployment (docs/security.md):
# a private CA and one certificate + key per identity, signed by it.
#
#   scripts/make-certs.sh DIR [IDENTITY...]      e.g. scripts/make-certs.sh certs agent-car1 agent-car2
#
# Always made: router, cli, planner, health-watcher, scheduler, workload (the
# workloads' own programs); the arguments
# add more (one `agent-<name>` per agent). The common name of each certificate
# is its identity: the router's access control (services/bus/secure.py) grants
# permissions by common name. Files: DIR/ca.pem, DIR/ca.key, DIR/<identity>.pem,
# DIR/<identity>.key (keys mode 600).
#
# Idempotent: an existing CA is kept, and an identity whose certificate exists
# and verifies against the CA is left alone (delete its files to reissue it).
# The router certificate carries the names clients connect to; by default
# localhost and 127.0.0.1, more with ANK_ROUTER_SANS="DNS:router.lan,IP:10.0.0.1".
set -euo pipefail

usage() { echo "usage: $0 DIR [IDENTITY...]   (identities: letters, digits, '-', '_')" >&2; exit 2; }
[ $# -ge 1 ] || usage
command -v openssl >/dev/null || { echo "$0: openssl is not installed" >&2; exit 1; }

dir=$1; shift
identities=(router cli planner health-watcher scheduler workload "$@")
for id in "${identities[@]}"; do
  [[ $id =~ ^[A-Za-z0-9_-]{1,64}$ ]] || { echo "$0: bad identity name '$id'" >&2; usage; }
done
router_sans=${ANK_ROUTER_SANS:-"DNS:localhost,IP:127.0.0.1"}
ca_days=3650
leaf_days=825

mkdir -p "$dir"
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The CA: kept if present, so that certificates issued earlier stay valid.
if [ ! -s "$dir/ca.pem" ] || [ ! -s "$dir/ca.key" ]; then
  cat > "$tmp/ca.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no
x509_extensions = ca_ext
[dn]
CN = ank-zenoh-ca
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
CNF
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" -days "$ca_days" -config "$tmp/ca.cnf" 2>/dev/null
  chmod 644 "$dir/ca.pem"
  echo "made CA $dir/ca.pem"
fi

for id in "${identities[@]}"; do
  cert="$dir/$id.pem"; key="$dir/$id.key"
  if [ -s "$cert" ] && [ -s "$key" ] && openssl verify -CAfile "$dir/ca.pem" "$cert" >/dev/null 2>&1; then
    continue
  fi
  # Every identity may be a TLS client; the router is also the server and
  # needs the names clients check (verify_name_on_connect).
  if [ "$id" = router ]; then sans="DNS:router,$router_sans"; else sans="DNS:$id"; fi
  cat > "$tmp/$id.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = $id
[leaf_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = $sans
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$key" -out "$tmp/$id.csr" -config "$tmp/$id.cnf" 2>/dev/null
  openssl x509 -req -in "$tmp/$id.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -CAserial "$tmp/ca.srl" -days "$leaf_days" -extfile "$tmp/$id.cnf" -extensions leaf_ext \
    -out "$cert" 2>/dev/null
  chmod 644 "$cert"
  chmod 600 "$key"
  echo "made $cert (CN=$id)"
done
