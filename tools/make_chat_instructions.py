"""Writes gpt2kit/assets/instructions/chat.jsonl: the small instruction set shipped as ``builtin:chat``.

Every record is written here by this script (no outside text), so it carries gpt2kit's own license; every answer
is computed or taken from the tables below. It teaches a toy model the chat turn format, nothing more.
Run: python tools/make_chat_instructions.py (deterministic: the same file every time).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "gpt2kit" / "assets" / "instructions" / "chat.jsonl"

GREETINGS = [
    ("Hello!", "Hello! How can I help you today?"), ("Hi!", "Hi! What would you like to talk about?"),
    ("Hi there.", "Hello! What can I do for you?"), ("Good morning!", "Good morning! How can I help?"),
    ("Good evening.", "Good evening! What would you like to know?"), ("Hey.", "Hey! How can I help you?"),
    ("How are you?", "I am fine, thank you. How can I help you?"), ("Thank you!", "You are welcome!"),
    ("Thanks for your help.", "You are welcome. I am glad I could help."), ("Goodbye!", "Goodbye! Have a nice day."),
    ("Bye.", "Bye! Talk to you later."), ("See you later.", "See you later!"),
    ("Who are you?", "I am a small language model trained with gpt2kit."),
    ("What are you?", "I am a small language model. I write text one token at a time."),
    ("What is your name?", "I do not have a name. I am a small language model trained with gpt2kit."),
    ("Hello! Who are you?", "Hello! I am a small language model trained with gpt2kit."),
    ("Can you see me?", "No. I can only read the text you write."),
    ("Can you hear me?", "No. I can only read the text you write."),
    ("Do you know everything?", "No. I am a very small model and I know very little."),
    ("Are you a person?", "No, I am a computer program: a small language model."),
]
OPPOSITES = [("hot", "cold"), ("big", "small"), ("up", "down"), ("day", "night"), ("fast", "slow"),
             ("happy", "sad"), ("old", "new"), ("open", "closed"), ("light", "dark"), ("left", "right"),
             ("tall", "short"), ("wet", "dry"), ("full", "empty"), ("early", "late"), ("hard", "soft"),
             ("in", "out"), ("yes", "no"), ("win", "lose"), ("first", "last"), ("rich", "poor"),
             ("loud", "quiet"), ("near", "far"), ("strong", "weak"), ("clean", "dirty"), ("thick", "thin")]
CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
            ("China", "Beijing"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Russia", "Moscow"),
            ("the United Kingdom", "London"), ("the United States", "Washington, D.C."), ("India", "New Delhi"),
            ("Mexico", "Mexico City"), ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Norway", "Oslo"),
            ("Sweden", "Stockholm"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Argentina", "Buenos Aires"),
            ("Ireland", "Dublin"), ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Thailand", "Bangkok"),
            ("South Korea", "Seoul")]
LISTS = {"colors": ["red", "blue", "green", "yellow", "orange", "purple", "black", "white"],
         "fruits": ["apple", "banana", "orange", "pear", "grape", "cherry", "lemon", "plum"],
         "animals": ["dog", "cat", "horse", "cow", "lion", "bird", "fish", "sheep"],
         "vegetables": ["carrot", "potato", "onion", "pea", "bean", "cabbage", "lettuce", "tomato"],
         "shapes": ["circle", "square", "triangle", "rectangle", "oval", "star"],
         "planets": ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
WORDS = ["cat", "dog", "house", "water", "green", "table", "river", "apple", "music", "happy", "sun", "book",
         "garden", "window", "friend", "winter", "summer", "bread", "ship", "whale", "union", "nation", "people"]
SENTENCES = ["The sun is bright today.", "I like to read books.", "The cat sleeps on the mat.",
             "We walked to the river.", "It is raining outside.", "The ship sailed at dawn.",
             "My friend plays the piano.", "Dinner is ready.", "The garden is full of flowers.",
             "The train leaves at noon.", "She wrote a long letter.", "Snow fell all night."]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve"]


def turn(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def join(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else items[0]


def records(rng: random.Random) -> list[dict]:
    out = [turn(q, a) for q, a in GREETINGS]
    for a in range(13):
        for b in range(13):
            out.append(turn(rng.choice([f"What is {a} + {b}?", f"Add {a} and {b}.", f"What is {a} plus {b}?"]),
                            f"{a} + {b} = {a + b}."))
            if a >= b:
                out.append(turn(rng.choice([f"What is {a} - {b}?", f"What is {a} minus {b}?"]),
                                f"{a} - {b} = {a - b}."))
            if 1 <= a <= 10 and 1 <= b <= 10:
                out.append(turn(rng.choice([f"What is {a} times {b}?", f"What is {a} x {b}?",
                                            f"Multiply {a} by {b}."]), f"{a} x {b} = {a * b}."))
    for n in range(3, 13):
        out.append(turn(f"Count from 1 to {n}.", ", ".join(str(i) for i in range(1, n + 1)) + "."))
        out.append(turn(f"Count down from {n} to 1.", ", ".join(str(i) for i in range(n, 0, -1)) + "."))
    for n, word in enumerate(NUMBER_WORDS):
        out.append(turn(f"Write the number {n} in words.", f"{n} is {word}."))
    for s in SENTENCES:
        out.append(turn(f"Repeat after me: {s}", s))
        out.append(turn(f"Write this in capital letters: {s}", s.upper()))
    for w in WORDS:
        out.append(turn(f"Spell the word {w}.", "-".join(w.upper())))
        out.append(turn(f"How many letters are in the word {w}?", f"The word {w} has {len(w)} letters."))
        out.append(turn(f"What is the first letter of {w}?", f"The first letter of {w} is {w[0]}."))
    for a, b in OPPOSITES:
        out.append(turn(f"What is the opposite of {a}?", f"The opposite of {a} is {b}."))
        out.append(turn(f"What is the opposite of {b}?", f"The opposite of {b} is {a}."))
    for country, city in CAPITALS:
        out.append(turn(f"What is the capital of {country}?", f"The capital of {country} is {city}."))
    for kind, items in LISTS.items():
        for k in (2, 3, 4):
            picked = rng.sample(items, k)
            out.append(turn(f"Name {NUMBER_WORDS[k]} {kind}.", join(picked).capitalize() + "."))
    for i, day in enumerate(DAYS):
        out.append(turn(f"What day comes after {day}?", f"{DAYS[(i + 1) % 7]} comes after {day}."))
        out.append(turn(f"What day comes before {day}?", f"{DAYS[(i - 1) % 7]} comes before {day}."))
    for i, month in enumerate(MONTHS):
        out.append(turn(f"What month comes after {month}?", f"{MONTHS[(i + 1) % 12]} comes after {month}."))
    out.append(turn("How many days are in a week?", "There are seven days in a week."))
    out.append(turn("How many months are in a year?", "There are twelve months in a year."))
    out.append(turn("List the days of the week.", join(DAYS) + "."))
    for a in range(0, 21):
        out.append(turn(f"Is {a} even or odd?", f"{a} is {'even' if a % 2 == 0 else 'odd'}."))
    for _ in range(60):
        a, b = rng.sample(range(1, 100), 2)
        big, small = max(a, b), min(a, b)
        out.append(turn(f"Which is bigger, {a} or {b}?", f"{big} is bigger than {small}."))
    for _ in range(40):  # two turns: the model must answer the last question, not the first
        a, b, c, d = (rng.randrange(10) for _ in range(4))
        out.append({"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                                 {"role": "assistant", "content": f"{a} + {b} = {a + b}."},
                                 {"role": "user", "content": f"And {c} + {d}?"},
                                 {"role": "assistant", "content": f"{c} + {d} = {c + d}."}]})
    return out


def main() -> None:
    rng = random.Random(20261204)
    rows, seen = [], set()
    for rec in records(rng):
        key = json.dumps(rec["messages"][:-1])
        if key not in seen:
            seen.add(key)
            rows.append(rec)
    rng.shuffle(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {OUT}: {len(rows)} records")


if __name__ == "__main__":
    main()
