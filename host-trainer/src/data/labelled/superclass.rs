//! CIFAR-100's 20 superclasses and the 5 fine classes of each, as published with the dataset
//! (<https://www.cs.toronto.edu/~kriz/cifar.html>; names as in its `coarse_label_names.txt` and
//! `fine_label_names.txt`).

/// The CIFAR-100 superclasses in coarse-label order (index = coarse label), each with its five
/// fine classes, spelled as in `fine_label_names.txt`.
pub const CIFAR100_SUPERCLASSES: [(&str, [&str; 5]); 20] = [
    (
        "aquatic_mammals",
        ["beaver", "dolphin", "otter", "seal", "whale"],
    ),
    (
        "fish",
        ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    ),
    ("flowers", ["orchid", "poppy", "rose", "sunflower", "tulip"]),
    ("food_containers", ["bottle", "bowl", "can", "cup", "plate"]),
    (
        "fruit_and_vegetables",
        ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    ),
    (
        "household_electrical_devices",
        ["clock", "keyboard", "lamp", "telephone", "television"],
    ),
    (
        "household_furniture",
        ["bed", "chair", "couch", "table", "wardrobe"],
    ),
    (
        "insects",
        ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    ),
    (
        "large_carnivores",
        ["bear", "leopard", "lion", "tiger", "wolf"],
    ),
    (
        "large_man-made_outdoor_things",
        ["bridge", "castle", "house", "road", "skyscraper"],
    ),
    (
        "large_natural_outdoor_scenes",
        ["cloud", "forest", "mountain", "plain", "sea"],
    ),
    (
        "large_omnivores_and_herbivores",
        ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    ),
    (
        "medium_mammals",
        ["fox", "porcupine", "possum", "raccoon", "skunk"],
    ),
    (
        "non-insect_invertebrates",
        ["crab", "lobster", "snail", "spider", "worm"],
    ),
    ("people", ["baby", "boy", "girl", "man", "woman"]),
    (
        "reptiles",
        ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    ),
    (
        "small_mammals",
        ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    ),
    (
        "trees",
        [
            "maple_tree",
            "oak_tree",
            "palm_tree",
            "pine_tree",
            "willow_tree",
        ],
    ),
    (
        "vehicles_1",
        ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    ),
    (
        "vehicles_2",
        ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
    ),
];

/// The superclass (coarse label, index into [`CIFAR100_SUPERCLASSES`]) of a CIFAR-100 fine class
/// name such as `"aquarium_fish"`; `None` for a name not in `fine_label_names.txt`.
pub fn cifar100_superclass(fine: &str) -> Option<usize> {
    CIFAR100_SUPERCLASSES
        .iter()
        .position(|(_, fines)| fines.contains(&fine))
}
