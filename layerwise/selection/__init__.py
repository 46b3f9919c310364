"""Selection: policies that choose layers from a card, and the split of a rank budget over them."""
