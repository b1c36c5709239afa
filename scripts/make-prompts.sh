#!/usr/bin/env bash
# Regenerates the placeholder prompt recordings prompts/<lang>/<id>.wav from
# prompts/<lang>/prompts.toml: speech with festival (msu_ru voice), or
# espeak-ng when festival fails or sounds implausible, and tones with sox.
# The clips then go through `hotline prompts import`, like studio recordings:
# 8 kHz mono 16-bit PCM, silence at the ends trimmed, brought to the loudness
# target of docs/prompts.md (speech -19 LUFS, the beep below it).
#
# A WAV that is not this script's own output (a studio recording; see
# docs/prompts.md) is kept unless --force is given. Generated files are
# listed with their SHA-256 in prompts/<lang>/generated.sha256.
#
# Usage: scripts/make-prompts.sh [--force] [lang]     (lang defaults to ru)
# FESTIVAL_VOICE and ESPEAK_VOICE override the voices; HOTLINE names the hotline
# binary (default: built with cargo).
# Needs: festival festvox-ru espeak-ng sox (Debian packages of those names).
set -euo pipefail

force=no
lang=ru
for arg in "$@"; do
    case $arg in
        --force) force=yes ;;
        -*) echo "usage: $0 [--force] [lang]" >&2; exit 2 ;;
        *) lang=$arg ;;
    esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$root/prompts/$lang
catalog=$dir/prompts.toml
manifest=$dir/generated.sha256
# Festival has a Russian voice only; other languages use espeak-ng alone.
festival_voice=${FESTIVAL_VOICE:-voice_msu_ru_nsh_clunits}
espeak_voice=${ESPEAK_VOICE:-$lang}

die() { echo "make-prompts: error: $*" >&2; exit 1; }
warn() { echo "make-prompts: warning: $*" >&2; }

for tool in sox soxi espeak-ng sha256sum awk; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install festival festvox-ru espeak-ng sox)"
done
[[ -f $catalog ]] || die "$catalog not found"
use_festival=yes
if [[ $lang != ru && -z ${FESTIVAL_VOICE:-} ]]; then
    use_festival=no
elif ! command -v text2wave >/dev/null; then
    warn "festival is not installed: using espeak-ng for every prompt"
    use_festival=no
fi

# Hash of each previously generated file, by file name.
declare -A generated=()
if [[ -f $manifest ]]; then
    while read -r hash name; do
        [[ -n ${name:-} ]] && generated[$name]=$hash
    done <"$manifest"
fi

# Written even when a later prompt fails, so files made so far stay known
# as generated.
write_manifest() {
    local name
    for name in "${!generated[@]}"; do
        if [[ -e $dir/$name ]]; then
            printf '%s  %s\n' "${generated[$name]}" "$name"
        fi
    done | sort -k2 >"$manifest.tmp"
    mv -f "$manifest.tmp" "$manifest"
}
tmp=$(mktemp -d)
trap 'write_manifest; rm -rf "$tmp"' EXIT
mkdir "$tmp/import"
if [[ -z ${HOTLINE:-} ]]; then
    cargo build --quiet --manifest-path "$root/Cargo.toml" || die "cannot build hotline"
    HOTLINE=$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" \
        | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug/hotline
fi
[[ -x $HOTLINE ]] || die "$HOTLINE is not an executable"

seconds() { soxi -D "$1"; }

# True when the file at $1 may be (re)written.
ours() {
    local file=$dir/$1.wav
    [[ $force == yes || ! -e $file ]] && return 0
    local hash
    hash=$(sha256sum "$file" | awk '{print $1}')
    [[ ${generated[$1.wav]:-} == "$hash" ]]
}

# Festival's Russian voice reads UTF-8. It reports unreadable text on stderr
# yet exits 0, sometimes without writing a file, so check both and compare
# the length with espeak-ng: a clip far shorter or longer than espeak's
# reading of the same words has dropped or garbled them.
festival_says() {
    local text=$1 out=$2 reference=$3
    [[ $use_festival == yes ]] || return 1
    printf '%s\n' "$text" | text2wave -eval "($festival_voice)" -o "$out" 2>"$tmp/festival.err" || return 1
    [[ -s $out ]] || return 1
    if grep -qiE 'error|no rule matches|unknown' "$tmp/festival.err"; then
        return 1
    fi
    awk -v f="$(seconds "$out")" -v e="$(seconds "$reference")" \
        'BEGIN { exit !(e > 0 && f / e >= 0.5 && f / e <= 2.5) }'
}

# Mono 16-bit with headroom; trimming, resampling and loudness are the import's.
# -R (repeatable): sox dithers with a fixed seed, so two runs give the same files.
to_mono() {
    sox -R "$1" -e signed-integer -b 16 -c 1 "$2" norm -3
}

check_output() {
    local file=$1 id=$2
    [[ $(soxi -r "$file") == 8000 && $(soxi -c "$file") == 1 && $(soxi -b "$file") == 16 ]] \
        || die "$id: output is not 8 kHz mono 16-bit"
    awk -v d="$(seconds "$file")" 'BEGIN { exit !(d >= 0.2) }' || die "$id: output is shorter than 0.2 s"
}

# Queued for the import, which writes $dir/<id>.wav.
put() {
    mv -f "$2" "$tmp/import/$1.wav"
}

speak() {
    local id=$1 text=$2
    local espeak=$tmp/$id.espeak.wav festival=$tmp/$id.festival.wav source
    espeak-ng -v "$espeak_voice" -w "$espeak" -- "$text" || die "$id: espeak-ng failed"
    if festival_says "$text" "$festival" "$espeak"; then
        source=$festival
    else
        [[ $use_festival == yes ]] && warn "$id: festival failed or sounds wrong, using espeak-ng"
        source=$espeak
    fi
    to_mono "$source" "$tmp/$id.wav" || die "$id: sox conversion failed"
    put "$id" "$tmp/$id.wav"
}

tone() {
    local id=$1 hz=$2 ms=$3
    local length
    length=$(awk -v ms="$ms" 'BEGIN { printf "%.3f", ms / 1000 }')
    sox -R -n -r 8000 -c 1 -b 16 -e signed-integer "$tmp/$id.wav" \
        synth "$length" sine "$hz" fade h 0.01 "$length" 0.01 norm -6 || die "$id: sox synth failed"
    put "$id" "$tmp/$id.wav"
}

# Soft chords (A minor, G, F, G; 6 s each, faded; the import sets the level): calm, and
# loops without a click because every chord fades in and out.
music() {
    local id=$1 i=0 parts=()
    for chord in "220 277.18 329.63" "196 246.94 293.66" "174.61 220 261.63" "196 246.94 293.66"; do
        read -r a b c <<<"$chord"
        i=$((i + 1))
        sox -R -n -r 8000 -b 16 -e signed-integer "$tmp/$id.$i.wav" \
            synth 6 sine "$a" sine "$b" sine "$c" channels 1 fade h 1.5 6 1.5 vol 0.3 \
            || die "$id: sox synth failed"
        parts+=("$tmp/$id.$i.wav")
    done
    sox -R "${parts[@]}" "$tmp/$id.wav" || die "$id: sox concatenation failed"
    put "$id" "$tmp/$id.wav"
}

declare -A seen=()
count=0
section=
lineno=0
while IFS= read -r -u 3 line || [[ -n $line ]]; do
    lineno=$((lineno + 1))
    line=${line%$'\r'}
    trimmed=$(sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' <<<"$line")
    [[ -z $trimmed || $trimmed == \#* ]] && continue
    if [[ $trimmed =~ ^\[([a-z]+)\]$ ]]; then
        section=${BASH_REMATCH[1]}
        continue
    fi
    case $section in
        prompts)
            [[ $trimmed =~ ^([a-z0-9_]+)\ =\ \"([^\"\\]+)\"$ ]] \
                || die "$catalog:$lineno: expected: id = \"text\" (one line, no quotes or backslashes in the text)"
            ;;
        tones)
            [[ $trimmed =~ ^([a-z0-9_]+)\ =\ \{\ hz\ =\ ([0-9]+),\ ms\ =\ ([0-9]+)\ \}$ ]] \
                || die "$catalog:$lineno: expected: id = { hz = N, ms = N }"
            ;;
        music)
            [[ $trimmed =~ ^([a-z0-9_]+)\ =\ \"([^\"\\]+)\"$ ]] \
                || die "$catalog:$lineno: expected: id = \"description\""
            ;;
        *) die "$catalog:$lineno: entry outside [prompts], [tones] or [music]" ;;
    esac
    id=${BASH_REMATCH[1]}
    [[ -z ${seen[$id]:-} ]] || die "$catalog:$lineno: prompt id $id appears twice"
    seen[$id]=1
    count=$((count + 1))
    if ! ours "$id"; then
        unset "generated[$id.wav]"
        echo "keeping $id.wav: not a generated placeholder (--force replaces it)"
        continue
    fi
    if [[ $section == prompts ]]; then
        speak "$id" "${BASH_REMATCH[2]}"
    elif [[ $section == music ]]; then
        music "$id"
    else
        tone "$id" "${BASH_REMATCH[2]}" "${BASH_REMATCH[3]}"
    fi
done 3<"$catalog"

(( count > 0 )) || die "$catalog lists no prompts"

if compgen -G "$tmp/import/*.wav" >/dev/null; then
    "$HOTLINE" prompts import "$tmp/import" --set "prompts.dir=\"$dir\"" \
        || die "hotline prompts import refused a placeholder (see above)"
    for file in "$tmp"/import/*.wav; do
        name=$(basename "$file")
        check_output "$dir/$name" "${name%.wav}"
        generated[$name]=$(sha256sum "$dir/$name" | awk '{print $1}')
        echo "made $name"
    done
fi

for file in "$dir"/*.wav; do
    [[ -e $file ]] || continue
    name=$(basename "$file" .wav)
    [[ -n ${seen[$name]:-} ]] || warn "$name.wav is not in prompts.toml and is never played"
done
total=$(du -ch "$dir"/*.wav | tail -n 1 | cut -f1)
echo "done: $count prompts in $dir ($total)"
