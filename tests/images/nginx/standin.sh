#!/bin/sh
# nginx stand-in: busybox httpd on port 80 serving /usr/share/nginx/html.
# A mounted /etc/nginx/nginx.conf is honoured as far as Ankaios's tests use
# one: each `location PATH { ... return 200 "TEXT"; }` serves TEXT at PATH.
# Podman 4.3's `kube play` mounts a configMap item with `subPath` as a
# directory holding the item: the file inside is read then.
root=/usr/share/nginx/html
conf=/etc/nginx/nginx.conf
[ -d "$conf" ] && [ -f "$conf/nginx.conf" ] && conf=$conf/nginx.conf
if [ -f "$conf" ]; then
  awk -v root="$root" '
    $1 == "location" { path = $2 }
    path != "" && $1 == "return" && $2 == "200" {
      text = $0; sub(/^[^"]*"/, "", text); sub(/"[^"]*$/, "", text); gsub(/\\n/, "\n", text)
      file = root path; dir = file; sub(/\/[^\/]*$/, "", dir)
      system("mkdir -p \"" dir "\""); printf "%s", text > file; close(file); path = ""
    }
  ' "$conf"
fi
trap 'exit 0' TERM INT
httpd -f -p 80 -h "$root" &
wait
