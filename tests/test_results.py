"""The result records: the JSON answer, the Arrow schema and the OpenAPI schema all come from one list of fields."""
import pytest

from emoreact.results import (NEIGHBOUR, PREDICTION, SCORED_ROW, STR, UNREADABLE, Record, ResultField,
                              with_fields)

LABELS = ["happy", "sad"]


def _values(record: Record) -> dict:
    sample = {"str": "x", "int": 1, "score": 0.123456, "bool": True, "strings": ["a"],
              "label_scores": {"happy": 0.5, "sad": 0.25}, "emoji_scores": {"😢": 0.75}, "neighbours": [],
              "post_text": {"caption": "so sad", "ocr": [{"text": "EWW", "score": 0.98765, "box": [[1, 2]] * 4}]},
              "channels": {"image": {"happy": 0.5, "sad": 0.25}, "text": None}, "label_channels": {"sad": "text"},
              "clip": {"format": "GIF", "duration_ms": 1200, "frame_count": 9, "frames_used": 8, "truncated": False,
                       "peaks": {"happy": 0, "sad": 600}},
              "stored_clip": {"format": "GIF", "duration_ms": 1200, "frame_count": 9},
              "timeline": [{"t_ms": 0, "emotions": ["happy"], "emotion_scores": {"happy": 0.91234, "sad": 0.1}}]}
    return {f.name: sample[f.kind] for f in record.fields}


@pytest.mark.parametrize("record", [PREDICTION, SCORED_ROW, UNREADABLE, NEIGHBOUR], ids=lambda r: r.name)
def test_every_face_of_a_record_comes_from_its_fields(record):
    schema = record.model().model_json_schema()
    assert list(schema["properties"]) == record.names
    assert all(schema["properties"][f.name]["description"] == f.doc for f in record.fields)
    assert schema["description"] == record.doc
    assert record.arrow_schema(LABELS).names == [f.name for f in record.columns()]
    assert sorted(record.arrow_schema(LABELS).names) == sorted(record.names)
    assert list(record.answer(**_values(record))) == record.names


def test_adding_a_field_is_one_change():
    caption = ResultField("caption", STR, "what the image shows, in words", nullable=True)
    grown = with_fields(PREDICTION, caption)
    assert grown.arrow_schema(LABELS).names[-1] == "caption"
    assert grown.arrow_schema(LABELS, after=UNREADABLE).names[-1] == "caption"
    properties = grown.model().model_json_schema()["properties"]
    assert properties["caption"]["description"] == "what the image shows, in words"
    assert grown.answer(**_values(PREDICTION), caption=None)["caption"] is None


def test_a_prediction_file_starts_with_the_columns_an_unreadable_image_fills():
    names = PREDICTION.arrow_schema(LABELS, after=UNREADABLE).names
    assert names[:3] == ["image", "error", "kind"] and set(names) == set(PREDICTION.names) | {"error", "kind"}


def test_answers_round_scores_and_leave_out_what_may_be_absent():
    values = _values(PREDICTION) | {"neighbours": None}
    answer = PREDICTION.answer(**values)
    assert "neighbours" not in answer and answer["novelty"] == 0.1235
    assert answer["emotion_scores"] == {"happy": 0.5, "sad": 0.25}
    with pytest.raises(TypeError, match="missing \\['image'\\]"):
        PREDICTION.answer(**{k: v for k, v in values.items() if k != "image"})
    with pytest.raises(TypeError, match="unknown \\['colour'\\]"):
        PREDICTION.answer(**values, colour="red")


def test_a_still_answers_without_clip_keys_and_a_clip_with_its_timeline_in_files_too():
    import pyarrow as pa

    still = PREDICTION.answer(**_values(PREDICTION) | {"clip": None, "timeline": None})
    assert "clip" not in still and "timeline" not in still
    clip = PREDICTION.answer(**_values(PREDICTION))
    assert clip["timeline"][0]["emotion_scores"] == {"happy": 0.9123, "sad": 0.1}
    assert clip["clip"]["peaks"] == {"happy": 0, "sad": 600}
    schema = PREDICTION.arrow_schema(LABELS)
    table = pa.Table.from_pylist([clip, still | {"clip": None, "timeline": None}], schema=schema)
    assert table.column("timeline").to_pylist()[1] is None
    assert table.column("clip").to_pylist()[0]["peaks"] == [("happy", 0), ("sad", 600)]


def test_the_web_documents_the_records_themselves():
    from emoreact.web import schemas

    assert schemas.Prediction is PREDICTION.model() and schemas.Neighbour is NEIGHBOUR.model()


def test_a_bad_record_is_refused():
    with pytest.raises(ValueError, match="unknown kind"):
        ResultField("x", "complex", "no such kind")
    with pytest.raises(ValueError, match="unique"):
        Record("Twice", "a field twice", (PREDICTION.fields[0], PREDICTION.fields[0]))


def test_a_posts_words_and_channels_round_like_scores_and_fill_their_arrow_columns():
    import pyarrow as pa

    answer = PREDICTION.answer(**_values(PREDICTION))
    assert answer["text"] == {"caption": "so sad", "ocr": [{"text": "EWW", "score": 0.9877, "box": [[1.0, 2.0]] * 4}]}
    assert answer["channels"] == {"image": {"happy": 0.5, "sad": 0.25}, "text": None}
    table = pa.Table.from_pylist([answer], schema=PREDICTION.arrow_schema(LABELS))
    row = table.to_pylist()[0]
    assert row["text"]["ocr"][0]["text"] == "EWW" and row["channels"]["text"] is None
    assert dict(row["decided_by"]) == {"sad": "text"}
