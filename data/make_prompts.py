"""Write data/prompts/train.jsonl and heldout.jsonl: a benign instruction set written for this project.

Hand-written subjects and templates below are combined deterministically. Subjects are split
between train and held-out (every prompt about a held-out subject is held out), so the Pareto
evaluation never sees a subject the experts or routers were trained on.

    python data/make_prompts.py        # rewrites both files (same content every time)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SCIENCE = [
    "photosynthesis", "gravity", "rainbows", "volcanoes", "the water cycle", "tides", "earthquakes", "magnets",
    "electricity", "the moon's phases", "seasons", "clouds", "thunderstorms", "fossils", "the human heart",
    "vaccines", "DNA", "black holes", "the solar system", "evaporation", "sound waves", "friction", "bees",
    "coral reefs", "recycling", "wind power", "solar panels", "the immune system", "sleep", "bread rising",
    "ice melting", "the northern lights", "plate tectonics", "migration of birds", "compost", "batteries",
    "rust", "echoes", "snowflakes", "the ocean's salt",
]
ACTIVITIES = [
    "staying focused while studying", "learning a new language", "starting to run", "keeping plants alive",
    "saving money each month", "cooking rice", "making new friends", "writing a thank-you note",
    "organising a small closet", "preparing for a job interview", "falling asleep faster", "drinking more water",
    "learning to play the guitar", "planning a picnic", "reading more books", "keeping a journal",
    "baking cookies", "taking better photos", "learning to swim", "painting a room", "walking a dog",
    "packing for a trip", "studying for a maths test", "making a budget", "planting tomatoes",
    "speaking in public", "cleaning a kitchen", "waking up early", "practising mindfulness", "riding a bike",
    "making pancakes", "decorating a birthday cake", "learning to draw", "hosting a board game night",
    "volunteering in the community", "starting a vegetable garden", "stretching after exercise",
    "teaching a child to read", "writing a short story", "caring for a cat",
]
THINGS = [
    "the ocean", "a library", "autumn leaves", "a mountain hike", "a city park", "coffee", "the night sky",
    "a farmers market", "music", "a rainy afternoon", "trains", "chess", "a lighthouse", "the desert",
    "a good friend", "a bicycle", "tea", "a museum", "sunflowers", "the first snow", "a campfire", "a river",
    "a bakery", "jazz", "a garden in spring", "a quiet morning", "a beach at sunset", "penguins", "a forest",
    "the internet", "a school teacher", "a birthday party", "a kite", "an old map", "a thunderstorm at night",
    "honey", "a village festival", "a new puppy", "a well-made sandwich", "a long train journey",
]
JOBS = [
    "a nurse", "a firefighter", "a librarian", "a chef", "a pilot", "a gardener", "an astronaut", "a teacher",
    "a carpenter", "a veterinarian", "a photographer", "a farmer", "a baker", "a scientist", "a musician",
    "a bus driver", "an architect", "a translator", "a park ranger", "a doctor", "a mail carrier",
    "a software developer", "a beekeeper", "a lifeguard", "a tailor", "a dentist", "a journalist",
    "a marine biologist", "a potter", "a coach",
]

TEMPLATES = {
    "science": ["Explain {x} in simple terms.", "Why is {x} important?", "What is one interesting fact about {x}?",
                "How would you describe {x} to a child?"],
    "activity": ["Give me a tip for {x}.", "What is a good way to get better at {x}?",
                 "I am nervous about {x}. Any advice?", "What should a beginner know about {x}?"],
    "thing": ["Describe {x}.", "What do you like about {x}?", "Write a few sentences about {x}.",
              "What makes {x} special?"],
    "job": ["What does {x} do during a typical day?", "What skills does {x} need?",
            "Why is the work of {x} valuable?"],
}
HELDOUT_FRACTION = 0.25
SEED = 20261127


def build(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    train, heldout = [], []
    for kind, subjects in (("science", SCIENCE), ("activity", ACTIVITIES), ("thing", THINGS), ("job", JOBS)):
        subjects = sorted(subjects)
        rng.shuffle(subjects)
        n_held = round(HELDOUT_FRACTION * len(subjects))
        for i, subject in enumerate(subjects):
            rows = heldout if i < n_held else train
            for template in TEMPLATES[kind]:
                rows.append({"prompt": template.format(x=subject), "kind": kind, "subject": subject})
    rng.shuffle(train)
    rng.shuffle(heldout)
    return train, heldout


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    train_rows, heldout_rows = build()
    out = Path(__file__).parent / "prompts"
    write_jsonl(out / "train.jsonl", train_rows)
    write_jsonl(out / "heldout.jsonl", heldout_rows)
    print(f"train: {len(train_rows)} prompts, held out: {len(heldout_rows)} prompts")
