"""Write src/resi_dual/assets/dictionary.txt: short descriptions of visual properties.

The dictionary TextSpan and SOMP pick from (docs/DESIGN.md §6). Built from curated word lists written for
this project, combined only where the combination is natural English ("a red car", "two dogs",
"a watercolor painting of a cat"); deduplicated, order kept. Rerun after editing the lists:

    python scripts/make_dictionary.py
"""

from __future__ import annotations

from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "resi_dual" / "assets" / "dictionary.txt"

OBJECTS = """car truck bus bicycle motorcycle train airplane helicopter boat ship sailboat canoe submarine rocket
tractor ambulance fire truck police car taxi van scooter skateboard surfboard snowboard skis tram
chair table sofa bed lamp desk bookshelf wardrobe mirror clock vase pillow blanket carpet curtain door window
staircase fireplace bathtub sink toilet refrigerator oven microwave kettle toaster teapot cup mug glass bottle
plate bowl fork knife spoon frying pan cooking pot cutting board basket bucket umbrella suitcase backpack
handbag wallet purse hat cap helmet scarf glove shoe boot sandal sneaker sock shirt t-shirt dress skirt
jacket coat sweater trousers jeans tie belt necklace ring bracelet earring watch sunglasses glasses
book notebook newspaper magazine envelope letter pen pencil paintbrush scissors ruler stapler calculator
laptop computer keyboard computer mouse monitor television smartphone telephone camera headphones
microphone loudspeaker radio guitar piano violin drum trumpet flute saxophone harp accordion
ball football basketball tennis racket baseball bat golf club kite balloon teddy bear doll toy car puzzle
dice playing card chess board candle light bulb flashlight lantern battery plug cable fan heater
hammer screwdriver wrench saw drill axe shovel rake ladder rope chain padlock key nail screw
box cardboard box crate barrel can jar tin bag plastic bag gift wrapped present flag banner sign poster
painting picture frame sculpture statue fountain bench lamppost traffic light street sign mailbox
fire hydrant parking meter fence gate wall bridge tower lighthouse windmill tent flagpole
tree palm tree pine tree oak tree flower rose tulip sunflower daisy orchid cactus mushroom leaf bush
grass lawn hedge vine fern bamboo seashell stone rock pebble log branch feather egg nest
apple banana orange lemon strawberry grape cherry pineapple watermelon pear peach tomato carrot potato
onion broccoli lettuce corn pepper cucumber pumpkin bread cake pie cookie donut sandwich hamburger
pizza hot dog salad soup sushi pasta noodles rice steak fried egg cheese ice cream chocolate candy
coffee tea wine beer juice milk water bottle wedding cake birthday cake""".split("\n")

ANIMALS = """dog puppy cat kitten horse pony cow calf pig sheep lamb goat donkey rabbit hamster guinea pig mouse
rat squirrel chipmunk hedgehog fox wolf bear polar bear panda koala kangaroo deer moose elk reindeer
camel llama giraffe zebra elephant rhinoceros hippopotamus lion tiger leopard cheetah jaguar lynx
monkey gorilla chimpanzee orangutan lemur sloth bat raccoon skunk otter beaver badger weasel
bird eagle hawk owl parrot pigeon sparrow crow swan duck goose chicken rooster turkey peacock flamingo
penguin ostrich hummingbird woodpecker seagull pelican heron stork kingfisher
fish goldfish shark dolphin whale seal walrus octopus squid jellyfish crab lobster shrimp starfish
turtle tortoise frog toad lizard snake crocodile alligator iguana chameleon
butterfly bee wasp ant beetle ladybug spider dragonfly grasshopper mosquito fly caterpillar snail worm
scorpion""".split("\n")

SCENES = """beach desert forest jungle rainforest mountain hill valley canyon cliff cave volcano glacier iceberg
waterfall river lake pond ocean sea coast harbor island meadow field farm vineyard orchard garden
park playground swamp marsh savanna tundra prairie snowfield
city street city skyline downtown area alley highway road intersection roundabout bridge crossing
parking lot gas station train station subway station airport runway bus stop port shipyard
shopping mall supermarket market stall bakery restaurant cafe bar kitchen dining room living room
bedroom bathroom office classroom library laboratory hospital room operating room church temple mosque
cathedral castle palace museum art gallery theater cinema concert hall stadium sports field
tennis court basketball court swimming pool gym factory warehouse construction site power plant
oil refinery mine quarry junkyard cemetery prison courtroom hotel lobby elevator corridor staircase
attic basement garage barn stable greenhouse farmhouse cottage log cabin skyscraper apartment building
suburban house village town square fountain plaza amusement park zoo aquarium campsite ski resort
golf course racetrack airfield dock pier lighthouse coast riverbank waterfront boardwalk
residential area industrial area commercial area farmland crop field rice paddy orchard
desert road mountain pass forest path country road snowy street rainy street busy intersection
empty room messy room clean kitchen crowded market quiet library""".split("\n")

COLOURS = """red orange yellow green blue purple pink brown black white gray beige turquoise teal navy blue
light blue dark green olive green lime green maroon burgundy crimson scarlet magenta lavender violet
gold silver bronze copper cream ivory tan khaki mustard yellow coral peach""".split("\n")

TEXTURES = """striped dotted polka-dotted checkered plaid zigzag wavy spiral swirly marbled speckled spotted
mottled blotchy veined cracked wrinkled crumpled folded pleated knitted woven braided quilted
embroidered lacy fluffy furry fuzzy hairy feathery scaly smooth rough bumpy grainy gritty sandy
porous spongy honeycombed perforated ribbed grooved corrugated rippled frosted glossy shiny matte
metallic iridescent translucent transparent reflective rusty weathered worn peeling faded dusty muddy
wet icy frozen slimy sticky soft hard crystalline granular fibrous stringy mesh-like netted
tiled brick-patterned herringbone paisley floral geometric camouflage tie-dye""".split("\n")

SHAPES = """circle square triangle rectangle oval diamond hexagon pentagon octagon star heart cross arrow
crescent spiral ring sphere cube cylinder cone pyramid disk cylinder-shaped tube arch dome wedge
zigzag line wavy line curved line straight line grid pattern dotted line""".split("\n")

MATERIALS = """wood metal steel iron aluminum copper gold silver glass plastic rubber leather fabric cotton wool
silk denim linen velvet paper cardboard stone marble granite concrete brick clay ceramic porcelain
sand soil mud ice snow water foam wax bamboo straw wicker cork fur feathers bone ivory
carbon fiber chrome tin plywood""".split("\n")

PLURALS = """dogs cats horses cows sheep birds ducks fish people children cars bicycles boats trees flowers
apples oranges bananas books bottles cups chairs houses buildings windows balloons candles coins
stars shoes keys eggs cookies""".split()

COUNTS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "many", "a few", "a pair of",
          "a dozen", "hundreds of"]

STYLES = """a photo|a black and white photo|a sepia photo|a vintage photo|a polaroid photo|a film photo|
a long exposure photo|a macro photo|a tilt-shift photo|a panoramic photo|a selfie|a studio portrait|
a snapshot|a stock photo|a product photo|a passport photo|a security camera image|a thermal image|
an x-ray image|an infrared photo|a satellite image|a microscope image|a medical scan|
an oil painting|a watercolor painting|an acrylic painting|a pencil sketch|a charcoal drawing|
an ink drawing|a pen drawing|a crayon drawing|a child's drawing|a doodle|a cartoon|a comic strip|
an anime drawing|a manga panel|a pixel art image|a vector illustration|a 3d rendering|
a low poly rendering|a video game screenshot|a clip art image|an icon|a logo|a tattoo|
a mosaic|a stained glass window|an embroidery|a graffiti|a mural|a woodcut print|
an engraving|a blueprint|a technical drawing|a diagram|a chart|a map|a silhouette|
an origami figure|a clay sculpture|a paper cutout|a collage|an abstract painting|
an impressionist painting|a cubist painting|a pop art image|a surrealist painting|
a minimalist image|a neon sign|a screenshot|a meme|a greeting card|a postage stamp""".replace("\n", "").split("|")

STYLE_SUBJECTS = ["a dog", "a cat", "a house", "a tree", "a person", "a car", "a flower", "a bird", "a city",
                  "a landscape", "a face", "a boat"]

VIEWPOINTS = """an aerial view|a bird's eye view|a top-down view|a view from below|a side view|a front view|
a rear view|a close-up photo|an extreme close-up|a wide-angle photo|a fisheye photo|a zoomed-in photo|
a zoomed-out photo|a distant view|a street-level view|an underwater photo|a photo taken from a drone|
a photo taken from a car|a photo taken from a window|a photo through a fence|a reflection in a mirror|
a reflection in water|a cropped photo|a centered photo|an off-center photo|a tilted photo|
a photo with a shallow depth of field|a photo with a blurred background|a photo with a busy background|
an object on a plain background|an object on a white background|an object on a black background|
a symmetric composition|a photo of a crowd seen from above|a panorama of a valley""".replace("\n", "").split("|")

VIEW_SUBJECTS = ["a city", "a forest", "a beach", "a farm", "a harbor", "a road", "a river", "a stadium",
                 "a parking lot", "a mountain", "a desert", "a village"]

LIGHTING = """a photo taken at night|a photo taken at sunset|a photo taken at sunrise|a photo taken at noon|
a photo taken during the golden hour|a photo taken during a storm|a photo taken in the fog|
a photo taken in the rain|a photo taken in the snow|a photo taken on a sunny day|
a photo taken on a cloudy day|a backlit photo|a photo with harsh shadows|a photo with soft light|
a photo lit by candlelight|a photo lit by neon lights|a photo lit by a flash|a dimly lit room|
a brightly lit room|an overexposed photo|an underexposed photo|a high contrast photo|
a low contrast photo|a photo with a lens flare|a photo with warm colors|a photo with cool colors|
a photo with vivid colors|a photo with pastel colors|a photo with muted colors|a grayscale image|
a dark image|a bright image|a blurry photo|a sharp photo|a noisy photo|a grainy photo|
a pixelated image|a low resolution image|a high resolution image|a jpeg compressed image|
a motion blurred photo|an out of focus photo|a photo with a vignette|a photo with a watermark|
a photo with a white border|a scanned photo|a photo of a screen|a photo with a spotlight|
moonlight|sunlight through trees|a rainbow|a starry sky|lightning in the sky|a sunset sky|
a cloudless blue sky|dark clouds|a foggy morning|a snowy landscape|autumn leaves|spring blossoms|
a summer day|a winter scene""".replace("\n", "").split("|")

SCRIPTS = ["Latin", "Chinese", "Japanese", "Korean", "Arabic", "Hebrew", "Cyrillic", "Greek", "Hindi",
           "Thai", "Bengali", "Tamil", "Armenian", "Georgian"]

TEXT_THINGS = """a street sign with text|a shop sign|a license plate|a price tag|a handwritten note|
a printed page of text|a page of a book|a newspaper headline|a billboard with text|a label on a bottle|
a receipt|a menu|a calendar|a clock face with numbers|a keyboard with letters|a scoreboard|
a road sign with numbers|a speed limit sign|a house number|a barcode|a QR code|a ticket|a map with labels|
a chalkboard with writing|a whiteboard with writing|text on a t-shirt|a tattoo of words|
a word written in capital letters|a word written in cursive|a single word|a long sentence|
an equation|a table of numbers|a digital display|a neon sign with letters|a subtitle|a caption""".replace("\n", "").split("|")

PEOPLE = """a man|a woman|a boy|a girl|a baby|a toddler|a child|a teenager|an old man|an old woman|a young man|
a young woman|a couple|a family|a group of friends|a crowd|a team|twins|a bride|a groom|
a doctor|a nurse|a police officer|a firefighter|a soldier|a chef|a waiter|a farmer|a fisherman|
a construction worker|a scientist|a teacher|a student|a businessman|a businesswoman|a pilot|
a sailor|an astronaut|a musician|a singer|a dancer|a painter|a photographer|a mechanic|a judge|
a priest|a monk|a clown|a magician|a cowboy|a knight|a king|a queen|a princess|a pirate|
a football player|a basketball player|a tennis player|a runner|a swimmer|a cyclist|a skier|
a surfer|a boxer|a climber|a hiker|a tourist|a beggar|a street vendor""".replace("\n", "").split("|")

ACTIONS = """running|walking|jumping|sitting|standing|lying down|sleeping|eating|drinking|cooking|reading|
writing|typing on a laptop|talking on the phone|taking a photo|painting|singing|dancing|playing guitar|
playing the piano|playing football|playing tennis|riding a bicycle|riding a horse|driving a car|
swimming|surfing|skiing|climbing|fishing|gardening|shopping|laughing|crying|smiling|shouting|
waving|hugging|kissing|shaking hands|holding an umbrella|carrying a bag|pushing a stroller|
walking a dog|feeding birds|sweeping the floor|washing dishes|working at a desk|giving a speech|
praying|meditating|doing yoga|lifting weights|throwing a ball|catching a ball|kicking a ball|
flying a kite|blowing out candles""".replace("\n", "").split("|")

FACES = """a smiling face|a sad face|an angry face|a surprised face|a frightened face|a face with closed eyes|
a face wearing glasses|a face with a beard|a face with a mustache|a face with makeup|a face with freckles|
a face in profile|a face looking at the camera|a face partly hidden|a bald head|long hair|short hair|
curly hair|blond hair|red hair|gray hair|braided hair|a ponytail|a hand|two hands|a fist|
a pointing finger|a thumbs up|bare feet|tattooed arms|an eye|a mouth|a nose|an ear|teeth""".replace("\n", "").split("|")

ANIMAL_CONTEXTS = ["a photo of {}", "{} in the wild", "a close-up of {}", "a drawing of {}"]

COLOUR_OBJECTS = """car bicycle bus truck door house wall dress shirt hat shoe umbrella balloon flower rose
apple ball chair sofa cup bowl bag boat kite bird fish butterfly sky sign light""".split()

FOOD = """a plate of food|a bowl of soup|a bowl of fruit|a plate of pasta|a slice of pizza|a slice of cake|
a cup of coffee|a glass of wine|a glass of beer|a glass of water|a cup of tea|a breakfast table|
a dinner table|a buffet|a picnic|a barbecue|a fruit market|a vegetable market|a bakery display|
a box of chocolates|a bowl of rice|a bowl of cereal|a basket of bread|a pile of vegetables""".replace("\n", "").split("|")

ABSTRACT = """a repeating pattern|a random pattern|a symmetric pattern|a gradient|a solid color|a blank image|
random noise|static noise|a checkerboard|concentric circles|parallel lines|diagonal lines|
horizontal stripes|vertical stripes|a grid of squares|a grid of dots|scattered dots|a single dot in the center|
a thin line|a thick line|a bright spot|a dark spot|a shadow|a reflection|a silhouette against the sky|
a large object|a small object|a tiny object in a large space|many small objects|an empty space|
a cluttered scene|a minimal scene|an object in the center|an object on the left|an object on the right|
an object at the top|an object at the bottom|an object in the foreground|an object in the background|
two objects side by side|an object inside another|overlapping objects|a stack of objects|a row of objects|
a circle of objects|a pile of objects|objects scattered on the floor|something broken|something new|
something old|something wet|something burning|smoke|fire|steam|water splashing|waves|bubbles|
dust|sparks|explosion|fireworks|confetti""".replace("\n", "").split("|")


def _words(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        # multi-word items are written with single spaces and separated by two or more, or line breaks:
        # simpler to keep a curated split list of multi-word items
        out.extend(_split_items(line))
    return out


MULTI = {"fire truck", "police car", "cooking pot", "cutting board", "frying pan", "plastic bag", "teddy bear",
         "toy car", "tennis racket", "baseball bat", "golf club", "playing card", "chess board", "light bulb",
         "cardboard box", "gift wrapped present", "picture frame", "traffic light", "street sign", "fire hydrant",
         "parking meter", "palm tree", "pine tree", "oak tree", "hot dog", "ice cream", "fried egg",
         "wedding cake", "birthday cake", "water bottle", "computer mouse", "guinea pig", "polar bear",
         "city street", "city skyline", "downtown area", "train station", "subway station", "bus stop",
         "parking lot", "gas station", "shopping mall", "market stall", "dining room", "living room",
         "office", "hospital room", "operating room", "art gallery", "concert hall", "sports field",
         "tennis court", "basketball court", "swimming pool", "construction site", "power plant",
         "oil refinery", "hotel lobby", "log cabin", "apartment building", "suburban house", "town square",
         "amusement park", "ski resort", "golf course", "residential area", "industrial area",
         "commercial area", "crop field", "rice paddy", "desert road", "mountain pass", "forest path",
         "country road", "snowy street", "rainy street", "busy intersection", "empty room", "messy room",
         "clean kitchen", "crowded market", "quiet library", "navy blue", "light blue", "dark green",
         "olive green", "lime green", "mustard yellow", "carbon fiber", "zigzag line", "wavy line",
         "curved line", "straight line", "grid pattern", "dotted line", "bridge crossing"}


def _split_items(line: str) -> list[str]:
    words = line.split()
    out, i = [], 0
    while i < len(words):
        for span in (3, 2):
            cand = " ".join(words[i : i + span])
            if cand in MULTI:
                out.append(cand)
                i += span
                break
        else:
            out.append(words[i])
            i += 1
    return out


#: nouns that take no indefinite article
MASS = {"scissors", "trousers", "jeans", "glasses", "sunglasses", "headphones", "noodles", "skis", "pasta",
        "rice", "soup", "salad", "bread", "cheese", "ice cream", "chocolate", "candy", "coffee", "tea", "wine",
        "beer", "juice", "milk", "grass", "bamboo", "sushi", "steak", "corn", "lettuce", "broccoli"}


def _a(noun: str) -> str:
    if noun in MASS:
        return noun
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def build() -> list[str]:
    objects, animals, scenes = _words(OBJECTS), _words(ANIMALS), _words(SCENES)
    colours, textures, shapes, materials = _words(COLOURS), _words(TEXTURES), _words(SHAPES), _words(MATERIALS)
    lines: list[str] = []
    lines += [f"a photo of {_a(o)}" for o in objects]
    lines += [o for o in objects]
    lines += [ctx.format(_a(a)) for a in animals for ctx in ANIMAL_CONTEXTS]
    lines += [f"a photo of {_a(s)}" for s in scenes] + [f"inside {_a(s)}" for s in scenes]
    lines += [c for c in colours] + [f"the color {c}" for c in colours] + [f"a mostly {c} image" for c in colours]
    lines += [f"{_a(c)} {o}" for c in colours[:24] for o in COLOUR_OBJECTS]
    lines += [f"{c1} and {c2}" for i, c1 in enumerate(colours[:14]) for c2 in colours[i + 1 : 14]]
    lines += [f"{t} texture" for t in textures] + [f"{_a(t)} surface" for t in textures]
    lines += [f"{_a(s)}" for s in shapes] + [f"{_a(s)} shape" for s in shapes if " " not in s]
    lines += [f"something made of {m}" for m in materials] + [f"{_a(m)} surface" for m in materials]
    lines += [f"{_a(m)} object" for m in materials[:20]]
    lines += [f"{c} {p}" for c in COUNTS for p in PLURALS]
    lines += STYLES + [f"{s} of {subj}" for s in STYLES[:40] for subj in STYLE_SUBJECTS]
    lines += VIEWPOINTS + [f"{v} of {subj}" for v in VIEWPOINTS[:12] for subj in VIEW_SUBJECTS]
    lines += LIGHTING
    lines += [f"the letter {ch}" for ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    lines += [f"a lowercase letter {ch}" for ch in "abcdefghijklmnopqrstuvwxyz"]
    lines += [f"the number {d}" for d in range(10)] + [f"a handwritten digit {d}" for d in range(10)]
    lines += [f"a printed digit {d}" for d in range(10)] + [f"the number {d}" for d in (10, 12, 20, 50, 100, 2024)]
    lines += [f"text written in {s} script" for s in SCRIPTS] + TEXT_THINGS
    lines += PEOPLE + [f"a photo of {p}" for p in PEOPLE[:20]]
    lines += [f"a person {a}" for a in ACTIONS] + [f"a child {a}" for a in ACTIONS[:30]]
    lines += FACES + FOOD + ABSTRACT
    out, seen = [], set()
    for ln in lines:
        ln = " ".join(ln.split())
        if ln and ln.lower() not in seen:
            seen.add(ln.lower())
            out.append(ln)
    return out


if __name__ == "__main__":
    lines = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} descriptions to {OUT}")
