#!/usr/bin/env bash
# Proves the Dockerfile builds and ships what it should, without Docker: the build context is
# made as Docker makes it (the repository minus .dockerignore), then the build stage's COPY and
# RUN lines are replayed in order in a scratch folder (a debug build sharing this checkout's
# target folder, so only authgate itself compiles), and the runtime stage's COPY lines lay out
# the image's /etc/authgate, which must pass `authgate check` and hold no key.
#
#   scripts/docker_context.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$(mktemp -d -t authgate-docker.XXXXXX)
trap 'rm -rf "$work"' EXIT
log() { printf '[docker_context] %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

for pattern in target/ .git/ config/keys.toml; do
    grep -qxF "$pattern" .dockerignore || fail ".dockerignore does not list $pattern"
done

# The context, with a decoy key file and database that must stay out of it.
context=$work/context
mkdir -p "$context"
decoys=()
for decoy in config/keys.toml config/keys.db; do
    if [[ ! -e $decoy ]]; then
        echo 'decoy: must not reach the image' >"$decoy"
        decoys+=("$decoy")
    fi
done
rsync -a --exclude-from=.dockerignore --exclude=target --exclude=.git ./ "$context/"
for decoy in "${decoys[@]}"; do rm -f "$decoy"; done
for secret in config/keys.toml config/keys.db; do
    [[ ! -e $context/$secret ]] || fail "$secret is in the build context"
done

# Replays the Dockerfile: COPY/RUN of the build stage in $work/build, COPY of the runtime
# stage (except --from) into $work/image.
stage=0
build=$work/build
image=$work/image
mkdir -p "$build" "$image"
joined=$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' Dockerfile)
while IFS= read -r line; do
    case "$line" in
    FROM*) stage=$((stage + 1)) ;;
    COPY\ --from*) ;;
    COPY*)
        read -r -a words <<<"${line#COPY }"
        dest=${words[-1]}
        unset 'words[-1]'
        if [[ $stage == 1 ]]; then
            target=$build/${dest#./}
        else
            target=$image$dest
        fi
        for source in "${words[@]}"; do
            [[ -e $context/$source ]] || fail "COPY $source: not in the build context"
            if [[ $dest == */ ]]; then
                mkdir -p "$target"
                cp -a "$context/$source" "$target"
            else
                mkdir -p "$(dirname "$target")"
                cp -a "$context/$source" "$target"
            fi
        done
        ;;
    RUN*)
        [[ $stage == 1 ]] || continue
        command=${line#RUN }
        command=${command//--release/}
        log "RUN ${command:0:100}…"
        (cd "$build" && CARGO_TARGET_DIR=$repo/target bash -euo pipefail -c "$command") >&2 ||
            fail "RUN failed: $command"
        ;;
    esac
done <<<"$joined"

binary=$repo/target/debug/authgate
[[ -x $binary ]] || fail "the build stage left no binary"
config=$image/etc/authgate/authgate.toml
[[ -f $config ]] || fail "the image has no /etc/authgate/authgate.toml"
[[ -f $image/etc/authgate/keys.toml ]] || fail "the image has no /etc/authgate/keys.toml"
if grep -q '^\s*\[\[keys\]\]' "$image/etc/authgate/keys.toml"; then
    fail "the image's key file holds keys"
fi
"$binary" check -c "$config" >/dev/null || fail "the image's config does not pass check"
log "OK: the context holds no keys, the build stage builds, the image's config passes check"
