"""Transfer text: raw text and other corpora turned into tokenised sentences a student learns from
(`kd data text`), and the check that such text holds no sentence of an evaluation split."""

# `kd data text` cuts longer sentences into pieces of at most this many tokens: the corpora's longest
# is 426 tokens (CRAFT), 99.9% have at most 129; one runaway line (a table, a sequence) would
# otherwise make one huge sentence.
MAX_SENTENCE_TOKENS = 250
