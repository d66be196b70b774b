#!/bin/bash
# yellowdog-ray's example Valkey install for the head, in short (see ../README.md).
VALKEY_VERSION=8.1.1
curl -O https://download.valkey.io/releases/valkey-$VALKEY_VERSION-jammy-$(arch).tar.gz
tar -xf valkey-$VALKEY_VERSION-jammy-$(arch).tar.gz -C /opt/yellowdog/agent
