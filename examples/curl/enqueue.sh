#!/bin/sh
# Enqueue a callback over the HTTP API (notifyq serve with api_address set), from any language:
#     NOTIFYQ_API=http://127.0.0.1:9470 NOTIFYQ_TOKEN=nqt_... CALLBACK_URL=https://your.app/hooks/order \
#         sh examples/curl/enqueue.sh
# Make the token once: notifyq tokens create my-app --queues default --write
set -eu
curl --fail-with-body --silent --show-error \
    -H "Authorization: Bearer ${NOTIFYQ_TOKEN}" \
    -H "Content-Type: application/json" \
    -d "{\"url\": \"${CALLBACK_URL}\", \"body\": {\"order\": 42, \"from\": \"curl\"}, \"delay_seconds\": 1}" \
    "${NOTIFYQ_API}/v1/callbacks"
echo
