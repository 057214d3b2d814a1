#!/usr/bin/env bash
# Renew the inference and management tokens with the API key (e.g. from cron, before they expire;
# token_expiration_min in config.properties). Every client re-reads key_file.json on a refusal.
source "$(dirname "$0")/lib.sh"
for kind in inference management; do rotate "$kind"; say "rotated the $kind token"; done
