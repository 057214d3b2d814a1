#!/usr/bin/env bash
# KServe manifests and storage layouts: scripts/kserve.sh --out DIR [--profile P] [--namespace NS]
#   [--storage-uri-prefix URI] [--image IMAGE] [--protocol v1|v2] [NAME ...]
# Writes DIR/kustomization.yaml (kubectl apply -k DIR), one InferenceService and NetworkPolicy per
# model, and DIR/storage/<name>/ (config/config.properties, model-store/<name>.mar, weights/) for
# each model's storageUri, from models/*/model-config.yaml and config.properties (--help: all options).
source "$(dirname "$0")/lib.sh"
exec "$PY" "$REPO/scripts/kserve_manifests.py" "$@"
