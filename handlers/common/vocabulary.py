"""The concept vocabulary CLIP scores against when a request brings no ``texts``."""

DEFAULT_CONCEPTS: tuple[str, ...] = (
    "person", "man", "woman", "child", "baby", "crowd", "dog", "cat", "horse", "bird", "cow", "sheep",
    "elephant", "bear", "zebra", "giraffe", "fish", "car", "bus", "truck", "bicycle", "motorcycle",
    "airplane", "train", "boat", "traffic light", "street", "building", "house", "bridge", "tree",
    "flower", "grass", "mountain", "beach", "sea", "river", "lake", "sky", "cloud", "snow", "forest",
    "desert", "city", "road", "chair", "table", "bed", "sofa", "television", "laptop", "phone", "book",
    "clock", "cup", "bottle", "plate", "food", "pizza", "cake", "fruit", "apple", "banana", "kitchen",
    "bathroom", "bedroom", "office", "painting", "sculpture", "toy", "ball", "umbrella", "bag", "shoe",
    "hat", "glasses", "guitar", "piano", "computer screen", "text", "logo", "map", "sunset", "night",
)
