"""The concept bank: everyday concepts among which an erasure looks for the erased concept's neighbours.

Concept erasure damages the concepts nearest to the erased one first (other digits, other painters,
other vehicles). With no retain list given, ``eraser.erase_concepts`` ranks these entries by how
close the model's own text features put them to the concept and protects the nearest few
(``eraser.families.diffusion.concept_neighbours``). The list is broad rather than deep: a few
entries in each family a user is likely to erase from or to care about. Extend it with
``CONCEPT_BANK + ("my concept", ...)`` through the ``bank=`` option.
"""

from __future__ import annotations

__all__ = ["CONCEPT_BANK"]

_NUMBERS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a number", "a letter",
)
_COLOURS = ("red", "green", "blue", "yellow", "black", "white", "purple", "orange")
_ANIMALS = (
    "a dog", "a cat", "a horse", "a cow", "a sheep", "a bird", "an eagle", "a fish", "a tench",
    "a shark", "a lion", "a tiger", "a bear", "an elephant", "a monkey", "a rabbit", "a mouse",
    "a snake", "a frog", "a butterfly", "a spider", "a deer", "a wolf", "a fox", "a duck",
    "an owl", "a penguin", "a giraffe", "a zebra", "a dolphin", "a spaniel", "a puppy", "a kitten",
)
_PEOPLE = (
    "a person", "a man", "a woman", "a child", "a boy", "a girl", "a baby", "an old man",
    "an old woman", "a face", "a portrait", "a crowd", "a soldier", "a doctor", "a king",
    "a queen", "an athlete", "a dancer", "a model", "a couple",
)
_BODY_AND_CLOTHES = (
    "a dress", "a suit", "a shirt", "a t-shirt", "a swimsuit", "a bikini", "jeans", "a coat",
    "a hat", "shoes", "a uniform", "a wedding dress", "clothes", "hands", "hair", "a smile",
)
_ART = (
    "a painting", "a drawing", "a sketch", "a photograph", "a sculpture", "a cartoon", "anime",
    "a watercolor", "an oil painting", "pixel art", "a poster", "a logo", "a statue",
    "impressionism", "cubism", "surrealism", "pop art", "renaissance art", "abstract art",
    "van gogh", "claude monet", "pablo picasso", "salvador dali", "rembrandt", "leonardo da vinci",
    "michelangelo", "andy warhol", "frida kahlo", "edvard munch", "gustav klimt", "johannes vermeer",
    "kelly mckernan", "thomas kinkade", "tyler edlin", "kilian eng", "greg rutkowski",
)
_OBJECTS = (
    "a chair", "a table", "a bed", "a sofa", "a lamp", "a clock", "a book", "a phone",
    "a computer", "a television", "a camera", "a cassette player", "a radio", "a guitar",
    "a piano", "a violin", "a french horn", "a trumpet", "a drum", "a chain saw", "a hammer",
    "a knife", "a gun", "a sword", "a cup", "a bottle", "a vase", "a bag", "an umbrella",
    "a ball", "a golf ball", "a football", "a tennis racket", "a parachute", "a kite",
    "a gas pump", "a key", "a coin", "a flag", "a candle", "a mirror", "a window", "a door",
)
_VEHICLES = (
    "a car", "a truck", "a garbage truck", "a bus", "a train", "a bicycle", "a motorcycle",
    "an airplane", "a helicopter", "a boat", "a ship", "a rocket", "a tractor", "a taxi",
    "a police car", "a fire truck",
)
_FOOD = (
    "food", "an apple", "a banana", "an orange", "a pizza", "a cake", "bread", "a burger",
    "coffee", "wine", "ice cream", "a salad", "sushi", "a sandwich",
)
_PLACES = (
    "a house", "a church", "a cathedral", "a castle", "a tower", "a bridge", "a city street",
    "a city", "a village", "a skyscraper", "a temple", "a mosque", "a school", "a hospital",
    "a kitchen", "a room", "a bedroom", "an office", "a shop", "a restaurant", "a stadium",
    "a park", "a garden", "a farm", "a beach", "a forest", "a mountain", "a desert", "a river",
    "a lake", "the sea", "the sky", "a landscape", "a road", "snow", "rain", "the night", "the sun",
    "the moon", "a tree", "a flower", "a rose", "grass", "a fire", "water",
)

# Every entry once, in family order.
CONCEPT_BANK: tuple[str, ...] = tuple(dict.fromkeys(
    _NUMBERS + _COLOURS + _ANIMALS + _PEOPLE + _BODY_AND_CLOTHES + _ART + _OBJECTS + _VEHICLES + _FOOD + _PLACES
))
