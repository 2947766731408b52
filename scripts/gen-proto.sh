#!/usr/bin/env bash
# Generates TypeScript from the project's own .proto files with ts-proto (one generator for all).
# --check regenerates into a temporary folder and fails when the checked-in code differs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || { echo "protoc missing: apt-get install protobuf-compiler" >&2; exit 1; }
out=$PWD/src/protocol/gen
dest=$out
if [ "${1:-}" = "--check" ]; then dest=$(mktemp -d); trap 'rm -rf "$dest"' EXIT; fi
rm -rf "${dest:?}"/* 2>/dev/null || true
mkdir -p "$dest"
protos=$(cd src/protocol/proto && find . -name '*.proto' | sed 's|^\./||' | sort)
(cd src/protocol/proto && protoc \
  --plugin=protoc-gen-ts_proto="$OLDPWD/node_modules/.bin/protoc-gen-ts_proto" \
  --ts_proto_out="$dest" \
  --ts_proto_opt=esModuleInterop=true,importSuffix=.js,outputServices=false,forceLong=number,useOptionals=messages,oneof=unions,env=node,outputJsonMethods=false,outputPartialMethods=false,unrecognizedEnum=false,useDate=false,outputTypeRegistry=false,exportCommonSymbols=false \
  -I . $protos)
if [ "${1:-}" = "--check" ]; then
  if ! diff -r "$dest" "$out" >/dev/null; then
    echo "generated protobuf code is out of date: run npm run proto" >&2
    diff -r "$dest" "$out" | head -40 >&2
    exit 1
  fi
  echo "generated protobuf code is up to date"
fi
