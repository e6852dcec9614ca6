"""Write the bundled customer-support chatbot-intents demo dataset (data/chatbot_intents/).

Hand-written phrasings per intent, combined with hand-written slot values (products, amounts, time
phrases) and a few politeness frames, then de-duplicated and split with a fixed seed. Re-running this
script reproduces the committed CSV files byte for byte.
"""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path

ITEMS = [
    "order",
    "package",
    "parcel",
    "headphones",
    "laptop",
    "shoes",
    "jacket",
    "coffee machine",
    "phone case",
]
WHEN = [
    "yesterday",
    "last week",
    "three days ago",
    "on Monday",
    "two weeks ago",
    "this morning",
    "last month",
]
AMOUNTS = ["$20", "$45.99", "twice", "the full amount", "$120", "an extra $15"]

INTENTS: dict[str, list[str]] = {
    "track_order": [
        "where is my {item}",
        "can you tell me where my {item} is",
        "has my {item} shipped yet",
        "I ordered a {item} {when} and it still hasn't arrived",
        "what's the tracking number for my {item}",
        "when will my {item} be delivered",
        "track my {item} please",
        "my {item} is late, where is it",
        "is my {item} out for delivery",
        "how long until my {item} gets here",
        "delivery status of my {item}?",
        "the tracking page for my {item} hasn't updated since {when}",
        "any news on the {item} I bought {when}",
    ],
    "cancel_order": [
        "cancel my {item} order",
        "I want to cancel the {item} I ordered {when}",
        "please stop my order",
        "can I still cancel my {item}",
        "I changed my mind, cancel the {item}",
        "how do I cancel an order",
        "don't send the {item}, I no longer need it",
        "abort my purchase of the {item}",
        "I placed an order by mistake {when}, cancel it",
        "is it too late to cancel my order",
        "cancel everything I ordered {when}",
        "I'd like to call off my {item} order",
    ],
    "refund_request": [
        "I want a refund for my {item}",
        "how do I get my money back for the {item}",
        "refund the {item} I returned {when}",
        "when will I receive my refund",
        "I still haven't got my refund",
        "give me my money back",
        "can I get a refund, the {item} was broken",
        "I returned the {item}, where's my refund",
        "my refund of {amount} hasn't arrived",
        "is a refund possible for a used {item}",
        "the {item} was not as described, I want a refund",
        "please process a refund for order I made {when}",
    ],
    "change_address": [
        "I need to change my delivery address",
        "update the shipping address for my {item}",
        "I moved, how do I change my address",
        "can you send my {item} to a different address",
        "wrong address on my order, please fix it",
        "change the address on the order from {when}",
        "deliver to my work address instead",
        "my postcode is wrong on the {item} order",
        "how can I edit my shipping details",
        "please redirect my parcel to my new flat",
        "I typed the street name wrong when ordering the {item}",
        "update my billing and delivery address",
    ],
    "payment_issue": [
        "my payment was declined",
        "I was charged {amount} for the {item}",
        "why was my card charged {amount}",
        "the payment for my {item} failed",
        "I got billed twice for one order",
        "my card keeps getting rejected",
        "there's an unknown charge of {amount} on my statement",
        "checkout fails when I try to pay",
        "paypal isn't working on your site",
        "I was charged {when} but never ordered anything",
        "payment went through but no order confirmation",
        "why did you take {amount} from my account",
    ],
    "account_login": [
        "I can't log in to my account",
        "I forgot my password",
        "reset my password please",
        "my account is locked",
        "the login page says my password is wrong",
        "I never got the password reset email",
        "how do I recover my account",
        "two-factor code isn't arriving",
        "I can't sign in since {when}",
        "someone else may have accessed my account",
        "change the email address I use to log in",
        "my username doesn't work anymore",
    ],
    "product_availability": [
        "is the {item} in stock",
        "when will the {item} be available again",
        "do you have the {item} in size 10",
        "is the {item} sold out",
        "will you restock the {item}",
        "can I preorder the {item}",
        "is the black {item} available",
        "do you sell the {item} in stores",
        "notify me when the {item} is back",
        "how many {item}s do you have left",
        "is the {item} available for delivery to Canada",
        "the {item} I wanted {when} was out of stock, is it back",
    ],
    "talk_to_human": [
        "I want to talk to a human",
        "let me speak to an agent",
        "can I talk to a real person",
        "connect me to customer service",
        "this bot isn't helping, get me a person",
        "I need a human agent now",
        "what's your phone number",
        "transfer me to a representative",
        "is there someone I can call",
        "speak to a manager please",
        "I'd rather chat with a person about my {item}",
        "operator please",
    ],
    "greeting": [
        "hi",
        "hello there",
        "hey",
        "good morning",
        "good evening",
        "hi, anyone there?",
        "hello, I need some help",
        "hey there, how are you",
        "yo",
        "greetings",
        "hi bot",
        "morning!",
        "hello again",
        "good afternoon",
        "hiya",
        "hey, is this the support chat",
        "hello, is anybody there",
        "howdy",
        "hi team",
        "hey support",
        "hello, can you hear me",
        "hi, I'm back",
        "good day to you",
        "hey hey",
        "hello friend",
        "hi, just saying hello",
        "hey, what's up",
        "evening",
        "hello support team",
        "hi, are you a bot",
        "salutations",
        "hey, good to see you",
        "hello hello",
        "sup",
        "hi, how's it going",
    ],
    "goodbye_thanks": [
        "thanks, that's all",
        "thank you so much",
        "bye",
        "that solved it, thanks",
        "great, goodbye",
        "cheers, have a nice day",
        "thanks for your help",
        "ok thank you, bye",
        "perfect, that's everything",
        "appreciate it",
        "see you",
        "thanks a lot, bye for now",
        "nothing else, thanks",
        "that's all I needed",
        "you've been very helpful",
        "goodbye",
        "have a good one",
        "many thanks",
        "thanks, I'm all set",
        "ok great, that's it",
        "catch you later",
        "brilliant, thank you",
        "bye bye",
        "that's sorted then, thanks",
        "thank you, problem solved",
        "awesome, thanks again",
        "talk soon",
        "no more questions, bye",
        "ta, cheers",
        "thanks so much for sorting that out",
        "I'm done, thanks",
        "great help, goodbye",
        "all good now, thank you",
        "farewell",
        "super, thanks and bye",
    ],
}
FRAMES = [
    "{}",
    "{}",
    "{}",
    "hi, {}",
    "{} please",
    "excuse me, {}",
    "{}?",
    "hello, {} thanks",
    "quick question: {}",
]
NO_FRAME = {"greeting", "goodbye_thanks"}  # wrapping these in 'hi, ...' would make them ambiguous


def normalize(text: str) -> str:
    """tuneflow.data.validation.normalize: utterances must differ in more than punctuation."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.casefold())).strip()


def generate(seed: int = 7, per_intent: int = 60) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    for intent, patterns in INTENTS.items():
        count = 0
        budget = per_intent if intent not in NO_FRAME else min(per_intent, 40)
        attempts = 0
        while count < budget and attempts < 5000:
            attempts += 1
            text = rng.choice(patterns).format(
                item=rng.choice(ITEMS), when=rng.choice(WHEN), amount=rng.choice(AMOUNTS)
            )
            if intent not in NO_FRAME:
                text = rng.choice(FRAMES).format(text)
            elif rng.random() < 0.4:
                text = text.capitalize() + rng.choice(["", "!", "."])
            if normalize(text) not in seen:
                seen.add(normalize(text))
                count += 1
                rows.append((text, intent))
    rng.shuffle(rows)
    return rows


# Out-of-scope queries: what a shop's support bot should hand over or decline rather than force into one of
# its intents. Written by hand, never trained on: half choose the fallback threshold (oos_validation), half
# measure it (oos_test).
OUT_OF_SCOPE = [
    "what's the weather like tomorrow",
    "tell me a joke",
    "how many calories are in a banana",
    "who won the football match last night",
    "translate good morning into spanish",
    "what is the capital of australia",
    "play some relaxing music",
    "set an alarm for 7am",
    "how do I bake sourdough bread",
    "what's 17 times 23",
    "recommend a good movie for tonight",
    "book me a table for two at an italian restaurant",
    "what time is it in tokyo",
    "how tall is mount everest",
    "can you write a poem about the sea",
    "asdfgh qwerty",
    "lorem ipsum dolor sit amet",
    "what's the meaning of life",
    "how do I change a flat tyre",
    "is it going to rain this weekend",
    "who is the president of france",
    "give me a workout plan",
    "how do vaccines work",
    "what's a good name for a cat",
    "convert 10 miles to kilometres",
    "what is the boiling point of water",
    "remind me to call my mum",
    "how do I learn python",
    "find me a flight to berlin",
    "what's the best pizza topping",
    "do you believe in aliens",
    "how many legs does a spider have",
    "sing me a song",
    "what's the stock price of apple today",
    "how do I grow tomatoes on a balcony",
    "explain quantum computing simply",
    "what should I cook for dinner",
    "how far is the moon",
    "who painted the mona lisa",
    "zxcv bnm lkjh",
    "what's the exchange rate from euro to yen",
    "help me with my maths homework",
    "which planet is the largest",
    "how do I tie a tie",
    "what are the rules of chess",
    "where can I watch the olympics",
    "how long should I boil an egg",
    "suggest a holiday destination in june",
]


def main() -> None:
    out = Path(__file__).resolve().parent.parent / "data" / "chatbot_intents"
    out.mkdir(parents=True, exist_ok=True)
    rows = generate()
    by_intent: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        by_intent.setdefault(row[1], []).append(row)
    train, test = [], []
    for intent_rows in by_intent.values():
        n_test = max(4, len(intent_rows) // 6)
        test += intent_rows[:n_test]
        train += intent_rows[n_test:]
    for name, split in (("train", train), ("test", test)):
        with open(out / f"{name}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "intent"])
            writer.writerows(sorted(split, key=lambda r: (r[1], r[0])))
    oos = sorted(OUT_OF_SCOPE)
    for name, texts in (("oos_validation", oos[::2]), ("oos_test", oos[1::2])):
        with open(out / f"{name}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text"])
            writer.writerows([t] for t in texts)
    print(f"wrote {len(train)} train / {len(test)} test rows and {len(oos)} out-of-scope queries to {out}")


if __name__ == "__main__":
    main()
