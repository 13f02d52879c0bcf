"""EmoReact's hand-made emotion labels for face and emotion emojis.

Used by ``tools/emoji_data.py`` to write ``demo/labels.csv``. Every emoji of
the Unicode group 'smileys-emotion' (emojibase group 0) must appear here; a
few clearly emotional emojis from other groups are added at the end.

Labels: happy, sad, angry, fear, surprise, disgust, neutral, other.
A value may hold several labels joined by "|" where the emoji honestly
carries more than one. "other" means none of the seven emotions fits, and is
never combined with another label. Comments explain the judgement calls;
emojis without a comment are the obvious case.

Conventions used throughout:
- faces are labelled by their expression, not by the topic they refer to;
- affection without a visible smile (kissing faces, hearts) is "other";
- persona/costume faces (hat, glasses, disguise, monsters) are "other";
- contempt (eye-roll, unamused) is folded into "disgust", as in 7-class
  schemes without a separate contempt class;
- sleepiness, boredom and blank faces are "neutral" (no emotion shown).
"""

EMOTIONS = ("happy", "sad", "angry", "fear", "surprise", "disgust", "neutral", "other")

LABELS = {
    # --- smileys-emotion / face-smiling
    "😀": "happy",
    "😃": "happy",
    "😄": "happy",
    "😁": "happy",
    "😆": "happy",
    "😅": "happy|fear",  # nervous laugh: grin plus a drop of anxious sweat
    "🤣": "happy",
    "😂": "happy",
    "🙂": "happy",  # mild smile (sometimes used passive-aggressively; drawn as a smile)
    "🙃": "other",  # irony / sarcasm, no basic emotion
    "🫠": "other",  # embarrassment / overwhelmed, no basic emotion
    "😉": "happy",  # playful smiling wink
    "😊": "happy",
    "😇": "happy",
    # --- face-affection
    "🥰": "happy",  # love, but the face is plainly smiling
    "😍": "happy",  # love, but the face is plainly smiling
    "🤩": "happy|surprise",  # excited amazement
    "😘": "other",  # affection (kiss) without a smile
    "😗": "other",  # kiss: affection
    "☺️": "happy",
    "😚": "other",  # kiss: affection
    "😙": "other",  # kiss: affection
    "🥲": "happy|sad",  # smiling through a tear: bittersweet
    # --- face-tongue
    "😋": "happy",  # yummy, smiling
    "😛": "happy",  # playful tongue out: positive, silly
    "😜": "happy",  # playful wink with tongue
    "🤪": "happy",  # zany fun
    "😝": "happy",  # playful 'bleh'; CLDR also tags it 'gross', but the art grins
    "🤑": "other",  # greed / money
    # --- face-hand
    "🤗": "happy",  # hug, smiling
    "🤭": "happy|surprise",  # giggling 'oops' behind a hand
    "🫢": "surprise|fear",  # gasp with hand over mouth: shock, awe or horror
    "🫣": "fear",  # too scared to look (also shy)
    "🤫": "other",  # shushing
    "🤔": "other",  # thinking: cognition, not emotion
    "🫡": "other",  # salute: respect
    # --- face-neutral-skeptical
    "🤐": "other",  # keeping a secret
    "🤨": "other",  # skepticism / distrust
    "😐": "neutral",
    "😑": "neutral",  # expressionless (a touch annoyed, but blank)
    "😶": "neutral",  # speechless, blank
    "🫥": "neutral",  # fading out, 'meh'
    "😶‍🌫️": "neutral",  # spaced out, absent-minded
    "😏": "other",  # smug smirk
    "😒": "disgust",  # unamused: contempt folded into disgust
    "🙄": "disgust",  # eye-roll: contempt folded into disgust
    "😬": "fear",  # grimace: nervous 'yikes' / awkward, closest to anxiety
    "😮‍💨": "neutral",  # sigh (relief or tiredness), no marked emotion
    "🤥": "other",  # lying
    "🫨": "surprise|fear",  # shaking with shock / panic
    "🙂‍↔️": "other",  # gesture 'no'
    "🙂‍↕️": "other",  # gesture 'yes'
    # --- face-sleepy
    "😌": "happy|neutral",  # calm contentment, slight smile
    "😔": "sad",
    "😪": "neutral",  # sleepy (the bubble is snot, not a tear)
    "🤤": "other",  # desire / drooling
    "😴": "neutral",  # asleep: no emotion shown
    "🫩": "neutral",  # exhausted, bags under the eyes
    # --- face-unwell: illness and temperature are not emotions
    "😷": "other",
    "🤒": "other",
    "🤕": "sad",  # hurt / in pain: negative, closest to sad
    "🤢": "disgust",
    "🤮": "disgust",
    "🤧": "other",
    "🥵": "other",
    "🥶": "other",
    "🥴": "other",  # woozy / drunk
    "😵": "other",  # knocked out / dizzy
    "😵‍💫": "other",  # dizzy, hypnotised
    "🤯": "surprise",  # mind blown
    # --- face-hat / face-glasses: personas
    "🤠": "other",
    "🥳": "happy",  # party face: celebration
    "🥸": "other",
    "😎": "other",  # 'cool' persona; smiling, but about attitude, like the cowboy face
    "🤓": "other",  # nerd persona
    "🧐": "other",  # scrutiny
    # --- face-concerned
    "😕": "other",  # confusion
    "🫤": "neutral",  # 'meh', unimpressed / unsure
    "😟": "fear|sad",  # worried: anxiety with sadness
    "🙁": "sad",
    "☹️": "sad",
    "😮": "surprise",
    "😯": "surprise",
    "😲": "surprise",
    "😳": "surprise",  # flushed: shocked, embarrassed
    "🫪": "fear|surprise",  # distorted face (Emoji 17): panic, shock
    "🥺": "sad",  # pleading puppy eyes
    "🥹": "happy|sad",  # holding back tears of being touched / gratitude
    "😦": "surprise|fear",  # open-mouthed frown: startled, scared
    "😧": "fear|surprise",  # anguished: scared shock
    "😨": "fear",
    "😰": "fear",
    "😥": "sad",  # sad but relieved: disappointment dominates
    "😢": "sad",
    "😭": "sad",
    "😱": "fear|surprise",
    "😖": "angry|disgust",  # confounded: frustration, scrunched 'ugh' (tagged cringe)
    "😣": "sad",  # persevering: enduring distress / pain
    "😞": "sad",
    "😓": "sad|fear",  # downcast with sweat: dejected and nervous
    "😩": "sad",  # weary distress
    "😫": "sad",  # tired distress
    "🥱": "neutral",  # yawning: boredom
    # --- face-negative
    "😤": "angry",  # steam from nose (Unicode's 'triumph', used as fuming)
    "😡": "angry",
    "😠": "angry",
    "🤬": "angry",
    "😈": "other",  # mischievous devil grin
    "👿": "angry",
    "💀": "other",  # death, or slang 'dying of laughter': ambiguous
    "☠️": "other",  # danger / death symbol
    # --- face-costume
    "💩": "disgust",  # used to call something crap; the smile is a joke
    "🤡": "other",
    "👹": "other",  # costume mask
    "👺": "other",  # costume mask
    "👻": "other",  # playful ghost, not frightening in these designs
    "👽": "other",
    "👾": "other",
    "🤖": "other",
    # --- cat-face: by expression
    "😺": "happy",
    "😸": "happy",
    "😹": "happy",
    "😻": "happy",  # heart-eyes but smiling, like 😍
    "😼": "other",  # wry smile: smug
    "😽": "other",  # kiss, like the kissing faces
    "🙀": "surprise|fear",  # 'weary' cat is drawn as Munch-style shock
    "😿": "sad",
    "😾": "angry",  # pouting, grumpy
    # --- monkey-face: embarrassment / secrecy gestures
    "🙈": "other",
    "🙉": "other",
    "🙊": "other",
    # --- heart: love is not one of the seven labels
    "💌": "other",
    "💘": "other",
    "💝": "other",
    "💖": "other",
    "💗": "other",
    "💓": "other",
    "💞": "other",
    "💕": "other",
    "💟": "other",
    "❣️": "other",
    "💔": "sad",  # heartbreak
    "❤️‍🔥": "other",
    "❤️‍🩹": "other",  # healing / recovery
    "❤️": "other",
    "🩷": "other",
    "🧡": "other",
    "💛": "other",
    "💚": "other",
    "💙": "other",
    "🩵": "other",
    "💜": "other",
    "🤎": "other",
    "🖤": "other",  # dark humour / grief / goth: ambiguous
    "🩶": "other",
    "🤍": "other",
    # --- emotion (comic symbols)
    "💋": "other",
    "💯": "other",  # approval
    "💢": "angry",  # comic anger vein
    "🫯": "angry",  # fight cloud (Emoji 17): brawl
    "💥": "other",
    "💫": "other",
    "💦": "other",
    "💨": "other",
    "🕳️": "other",
    "💬": "other",
    "👁️‍🗨️": "other",
    "🗨️": "other",
    "🗯️": "angry",  # anger bubble
    "💭": "other",
    "💤": "neutral",  # sleep, like 😴
    # --- outside smileys-emotion: clearly emotional reactions
    "🎉": "happy",  # celebration
    "🎊": "happy",  # celebration
    "🥂": "happy",  # toast / celebration
    "👏": "happy",  # applause
    "🙌": "happy",  # 'hooray'
    "👍": "other",  # approval / agreement, not joy
    "👎": "disgust",  # dislike / rejection: aversion
    "🙏": "other",  # please / thanks
    "🤷": "neutral",  # shrug: indifference
    "🤦": "disgust",  # facepalm at something stupid: exasperated contempt / cringe
    "🙍": "sad",  # person frowning
    "🙎": "angry",  # person pouting
    "🙅": "other",  # gesture 'no'
    "🥀": "sad",  # wilted flower: loss, sadness
    "🗿": "neutral",  # stone face: deadpan reaction
}
