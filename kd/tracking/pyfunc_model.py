"""MLflow "model from code" for a kd tagger, a BiLSTM tagger or a transformer teacher: MLflow stores
this file, not a pickle, so loading a logged model runs only kd's own code and reads weights with
`weights_only=True` (BiLSTM) or from safetensors (transformer).

Input: a DataFrame with a column `tokens` (one list of tokens per sentence), or a list of token
lists; output: one list of IOB2 tags per sentence. Or raw text: a DataFrame with a column `text`
(one document or sentence per row), or a list of strings; output: per document a list of its
entities, `{"start", "end", "label", "text", "score"}` with character offsets into the document
(kd.models.raw_text). Parameter `task`: which corpus's head tags, for a multi-task model (default:
its first, as the signature says).
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
            from kd.models.inference import load_saved_tagger

            self.saved = load_saved_tagger(context.artifacts["tagger"])
            self.taggers = {}

        def tagger(self, task):
            """The tagger of one task (None: the model's first), made once."""
            from kd.models.inference import SavedTagger

            task = task or self.saved.model.task_names[0]
            if task not in self.taggers:
                self.taggers[task] = SavedTagger(self.saved, "cpu", task)
            return self.taggers[task]

        def predict(self, context, model_input, params=None):
            tagger = self.tagger((params or {}).get("task"))
            documents = raw_documents(model_input)
            if documents is not None:
                from kd.errors import FieldError
                from kd.models.raw_text import DocumentTooLong, tag_documents

                try:
                    return [[entity.as_json() for entity in found] for found in tag_documents(tagger, documents)]
                except DocumentTooLong as error:
                    raise FieldError("text", None, f"document {error.index + 1}: {error}") from None
            if hasattr(model_input, "columns"):
                column = "tokens" if "tokens" in model_input.columns else model_input.columns[0]
                sentences = [list(tokens) for tokens in model_input[column]]
            else:
                sentences = [list(tokens) for tokens in model_input]
            return tagger.tag(sentences)


def raw_documents(model_input) -> list[str] | None:
    """The documents of a raw-text input (a `text` column or a list of strings), else None. A cell
    holding a list of strings gives each (MLflow serving turns `{"inputs": {"text": [...]}}` into one
    row holding the list)."""
    from kd.errors import FieldError

    if hasattr(model_input, "columns"):
        if len(model_input.columns) == 0:  # what the server makes of input that names no column
            raise FieldError("text", None, 'no input: send {"dataframe_records": [{"text": "..."}]} or tokens')
        if "text" not in model_input.columns or (
                "tokens" in model_input.columns and model_input["tokens"].notna().any()):
            return None
        cells = list(model_input["text"])
    elif len(model_input) and all(isinstance(item, str) for item in model_input):
        cells = list(model_input)
    else:
        return None
    documents = []
    for cell in cells:
        if isinstance(cell, str):
            documents.append(cell)
        elif hasattr(cell, "__len__") and all(isinstance(text, str) for text in cell):
            documents.extend(cell)
        else:
            raise FieldError("text", None, f"every document must be a string, not {type(cell).__name__}")
    if not documents:
        raise FieldError("text", None, "no documents to tag")
    return documents


mlflow.models.set_model(KdTaggerModel())
