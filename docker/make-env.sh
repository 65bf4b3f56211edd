#!/bin/sh
# Print example.env with every empty secret filled with a fresh random value:  ./make-env.sh > .env
set -eu
here=$(dirname "$0")
hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
while IFS= read -r line; do
  case "$line" in
    LABEL_STUDIO_PASSWORD=) echo "LABEL_STUDIO_PASSWORD=$(hex 16)" ;;
    LABEL_STUDIO_API_KEY=) echo "LABEL_STUDIO_API_KEY=$(hex 20)" ;;
    BASIC_AUTH_PASS=) echo "BASIC_AUTH_PASS=$(hex 16)" ;;
    WEBHOOK_SECRET=) echo "WEBHOOK_SECRET=$(hex 16)" ;;
    *) echo "$line" ;;
  esac
done < "$here/example.env"
