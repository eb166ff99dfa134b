"""Transfer text: raw text and other corpora turned into tokenised sentences a student learns from
(`kd data text`), and the check that such text holds no sentence of an evaluation split."""
