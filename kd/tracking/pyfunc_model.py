"""MLflow "model from code" for a kd tagger: MLflow stores this file, not a pickle, so loading a
logged model runs only kd's own code and reads weights with `weights_only=True`.

Input: a DataFrame with a column `tokens` (one list of tokens per sentence), or a list of token
lists. Output: one list of IOB2 tags per sentence.
"""
from __future__ import annotations

import warnings

import mlflow
from mlflow.pyfunc import PythonModel

# The input is a DataFrame column or a list of token lists, documented above and in the signature.
# MLflow warns at class creation that `predict` lacks type hints (which would make it coerce inputs)
# and forces that warning on with its own filter, so it is recorded here and dropped.
with warnings.catch_warnings(record=True):
    class KdTaggerModel(PythonModel):
        def load_context(self, context) -> None:
            from kd.models.inference import SavedTagger

            self.tagger = SavedTagger(context.artifacts["tagger"])

        def predict(self, context, model_input, params=None):
            if hasattr(model_input, "columns"):
                column = "tokens" if "tokens" in model_input.columns else model_input.columns[0]
                sentences = [list(tokens) for tokens in model_input[column]]
            else:
                sentences = [list(tokens) for tokens in model_input]
            return self.tagger.tag(sentences)


mlflow.models.set_model(KdTaggerModel())
