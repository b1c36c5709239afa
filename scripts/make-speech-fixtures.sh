#!/usr/bin/env bash
# Regenerates the talk-off speech fixtures in tests/data/ (8 kHz, mono, 16-bit WAV).
# Needs espeak-ng, festival with festvox-ru (voice_msu_ru_nsh_clunits) and sox.
# The output is committed (about 88 s, 1.4 MB); rerun only when the corpus should change.
set -euo pipefail

out="$(cd "$(dirname "$0")/.." && pwd)/tests/data"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"

en_text=(
  "Thank you for calling. If you are in immediate danger, please hang up and dial nine one one."
  "Press one if you are calling about yourself, or press two if you are calling about someone else."
  "Your call is number forty seven in the queue. The expected waiting time is about three minutes."
  "On a scale from zero to ten, how would you rate your mood today? Seven, eight, maybe nine."
  "Please say your date of birth, for example the twenty third of March, nineteen eighty six."
  "We are open twenty four hours a day, seven days a week, including holidays."
  "My phone number is five five five, one two three four, and my extension is eighty eight."
  "Hmm, well, I do not really know. It has been a long week, and I am very tired."
)
ru_text=(
  "Здравствуйте, вы позвонили на линию психологической помощи. Оставайтесь на линии."
  "Нажмите один, если вы звоните по поводу себя, или два, если по поводу близкого человека."
  "Оцените своё состояние по шкале от нуля до десяти. Например, семь или восемь."
  "Мой номер телефона восемь девятьсот шестнадцать, двести тридцать четыре, пятьдесят шесть, семьдесят восемь."
  "Мне двадцать три года, я живу в Новосибирске уже одиннадцать лет."
  "Спасибо, что позвонили. Консультант ответит вам примерно через четыре минуты."
  "Ну, я не знаю, что сказать. Просто очень тяжело, понимаете?"
)

to_fixture() { # in.wav out.wav seconds: telephone rate, mono, 16-bit, peak at -3 dBFS
  sox "$1" -r 8000 -c 1 -b 16 "$2" trim 0 "$3" gain -n -3
}

# English: espeak-ng, alternating male and female variants and speaking rates so the
# fundamental and its harmonics sweep through the DTMF bands.
variants=(en-us en-us+f3 en-gb+m3 en-us+f5 en-gb-scotland+f2 en-us+m7 en-gb+f4 en-us+klatt2)
parts=()
for i in "${!en_text[@]}"; do
  espeak-ng -v "${variants[$i]}" -s $((140 + 10 * (i % 4))) -p $((30 + 10 * i % 60)) \
    -w "$tmp/en$i.wav" "${en_text[$i]}"
  sox "$tmp/en$i.wav" -r 8000 -c 1 "$tmp/en$i.8k.wav"
  parts+=("$tmp/en$i.8k.wav")
done
sox "${parts[@]}" "$tmp/en.wav"
to_fixture "$tmp/en.wav" "$out/speech_en.wav" 32

# Russian: espeak-ng (male and female variants).
ru_variants=(ru ru+f3 ru+m3 ru+f4 ru+m5 ru+f2 ru)
parts=()
for i in "${!ru_text[@]}"; do
  espeak-ng -v "${ru_variants[$i]}" -s $((135 + 10 * (i % 3))) -w "$tmp/ru$i.wav" "${ru_text[$i]}"
  sox "$tmp/ru$i.wav" -r 8000 -c 1 "$tmp/ru$i.8k.wav"
  parts+=("$tmp/ru$i.8k.wav")
done
sox "${parts[@]}" "$tmp/ru.wav"
to_fixture "$tmp/ru.wav" "$out/speech_ru_espeak.wav" 26

# Russian: festival (unit selection, a more natural-sounding voice).
printf '%s\n' "${ru_text[@]}" > "$tmp/ru.txt"
text2wave -eval '(voice_msu_ru_nsh_clunits)' -o "$tmp/ru_fest.wav" "$tmp/ru.txt"
to_fixture "$tmp/ru_fest.wav" "$out/speech_ru_festival.wav" 30

for f in "$out"/speech_*.wav; do
  printf '%s: %ss\n' "$(basename "$f")" "$(soxi -D "$f")"
done
