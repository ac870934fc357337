"""The demo's prompts: "Write one sentence about <item>." over a few hundred everyday items.

Items are deliberately mixed: pleasant (a picnic), neutral (a stapler) and unpleasant (a traffic jam), so a
sentiment reward has room to move. The split is fixed (every fifth item is held out), independent of the seed.
"""

from __future__ import annotations

TEMPLATE = "Write one sentence about {}."

ITEMS = [
    # home
    "a kitchen table", "a front door", "a sofa", "a bookshelf", "a ceiling fan", "a bathtub", "a staircase",
    "a window", "a doormat", "a wardrobe", "a lamp", "a rug", "a pillow", "a blanket", "a mirror", "a curtain",
    "a leaky faucet", "a squeaky floorboard", "a dusty attic", "a basement", "a garage", "a mailbox",
    "a garden hose", "a lawn mower", "a fence", "a chimney", "a doorbell", "a light switch",
    "a broken dishwasher", "a pile of laundry", "an alarm clock", "a vacuum cleaner",
    # kitchen and food
    "coffee", "tea", "toast", "pancakes", "a bowl of soup", "fresh bread", "an apple", "a banana", "a lemon",
    "a tomato", "an onion", "garlic", "rice", "pasta", "cheese", "chocolate", "ice cream", "popcorn",
    "a sandwich", "a salad", "leftovers", "a burnt pizza", "cold coffee", "a stale cookie", "a frying pan",
    "a teapot", "a fridge", "a microwave", "a cutting board", "a grocery list", "a spoon", "a lunch box",
    # work and school
    "a stapler", "a paperclip", "a spreadsheet", "a meeting", "a deadline", "an email inbox", "a printer",
    "a desk chair", "an office plant", "a coffee break", "a job interview", "a performance review",
    "a whiteboard", "a notebook", "a pencil", "an eraser", "a calculator", "homework", "a math exam",
    "a school bus", "a classroom", "a library card", "a textbook", "a group project", "a lecture",
    "a report card", "a lost password", "a slow computer", "a software update", "a dead battery",
    "a conference call", "a commute",
    # city and travel
    "a traffic jam", "a bus stop", "a train station", "an airport", "a delayed flight", "a suitcase",
    "a passport", "a hotel room", "a taxi", "a bicycle", "a parking lot", "a parking ticket", "a street lamp",
    "a crosswalk", "a bridge", "a tunnel", "a subway", "a road trip", "a gas station", "a flat tire",
    "a map", "a city park", "a fountain", "a museum", "a bakery", "a post office", "a bank queue",
    "a supermarket", "a shopping cart", "a vending machine", "a construction site", "a noisy neighbor",
    # nature and weather
    "rain", "snow", "fog", "a thunderstorm", "a heat wave", "a sunny morning", "a cloudy afternoon", "wind",
    "a puddle", "a river", "a lake", "the ocean", "a beach", "a mountain", "a forest", "a desert", "a meadow",
    "a waterfall", "a sunset", "a sunrise", "the moon", "the stars", "a rainbow", "autumn leaves",
    "a frozen pond", "mud", "a mosquito", "a spider web", "a weed", "a cactus", "a rose", "a sunflower",
    "an oak tree", "moss", "a pebble", "a seashell", "a drought", "a flood",
    # animals
    "a cat", "a dog", "a goldfish", "a hamster", "a parrot", "a horse", "a cow", "a sheep", "a pigeon",
    "a crow", "a squirrel", "a rabbit", "a fox", "a bee", "a wasp", "an ant", "a snail", "a frog", "a duck",
    "an owl", "a turtle", "a butterfly", "a fly in the kitchen", "a barking dog at night",
    # people and social life
    "a neighbor", "a grandparent", "a best friend", "a stranger", "a birthday party", "a wedding",
    "a family dinner", "a first date", "a phone call", "a text message", "a handshake", "a hug",
    "an apology", "an argument", "a rumor", "a compliment", "a surprise visit", "a long queue",
    "a crowded elevator", "a waiting room", "a dentist appointment", "a doctor's visit", "a hospital",
    "a cold", "a headache", "a sleepless night", "a nap", "a morning jog", "a gym", "a yoga class",
    # objects and tools
    "a hammer", "a screwdriver", "a ladder", "a bucket", "a rope", "a flashlight", "a candle", "an umbrella",
    "a backpack", "a wallet", "a set of keys", "a pair of shoes", "a sock with a hole", "a winter coat",
    "a scarf", "a hat", "a watch", "a pair of glasses", "a phone charger", "a tangled cable", "a remote control",
    "a television", "a radio", "a camera", "a photograph", "a postcard", "a stamp", "a coin", "a receipt",
    "a cardboard box", "a plastic bag", "a trash can", "a recycling bin", "a rusty nail", "a broken umbrella",
    # leisure and culture
    "a book", "a novel", "a poem", "a song", "a guitar", "a piano", "a drum", "a concert", "a movie",
    "a board game", "a puzzle", "a chess match", "a football game", "a swimming pool", "a picnic",
    "a campfire", "a tent", "a kite", "a balloon", "a painting", "a sculpture", "a library", "a bookstore",
    "a newspaper", "a magazine", "a podcast", "a video game", "a theme park", "a zoo", "a circus",
    "a holiday", "a weekend", "a Monday morning", "a rainy Sunday", "a summer vacation", "New Year's Eve",
    # chores and errands
    "doing the dishes", "taking out the trash", "paying bills", "filing taxes", "cleaning the bathroom",
    "ironing shirts", "mowing the lawn", "grocery shopping", "waiting on hold", "filling out a form",
    "moving house", "packing boxes", "assembling furniture", "a power outage", "a broken elevator",
    "a missed bus", "a lost umbrella", "a spilled drink", "a burnt toast", "a wrong number",
    # odds and ends
    "a clock", "a calendar", "a map of the world", "a globe", "a telescope", "a microscope", "a robot",
    "a spaceship", "a volcano", "an island", "a lighthouse", "a castle", "a farm", "a tractor", "a windmill",
    "a train", "a sailboat", "a submarine", "an old car", "a new car", "a motorcycle", "a skateboard",
    "a scooter", "a helmet", "a bench", "a playground", "a swing", "a slide", "a sandbox", "a snowman",
    "a sandcastle", "a garden", "a greenhouse", "a tree house", "a hammock", "a porch", "a balcony",
    "a rooftop",
]

assert len(ITEMS) == len(set(ITEMS)), "duplicate demo items"


def all_prompts() -> list[str]:
    return [TEMPLATE.format(item) for item in ITEMS]


def split_prompts() -> tuple[list[str], list[str]]:
    """(train, held-out eval): every fifth item is held out (fixed, independent of the seed)."""
    prompts = all_prompts()
    train = [p for i, p in enumerate(prompts) if i % 5 != 4]
    held_out = [p for i, p in enumerate(prompts) if i % 5 == 4]
    return train, held_out
