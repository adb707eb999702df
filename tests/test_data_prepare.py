"""`mbt data prepare`: manifests from small annotation files written in each official format."""

from __future__ import annotations

from pathlib import Path

import pytest

from mbt.cli import main
from mbt.data.manifest import ManifestError, read_classes, read_manifest
from mbt.data.prepare import prepare_audioset, prepare_epic_kitchens, prepare_vggsound


def touch(path: Path) -> Path:
    # prepare only looks files up; it never decodes them
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# ==================================================================== AudioSet
AUDIOSET_LABELS = '''index,mid,display_name
0,/m/09x0r,"Speech"
1,/m/0ytgt,"Child speech, kid speaking"
2,/m/04rlf,"Music"
'''

AUDIOSET_SEGMENTS = '''# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4
# YTID, start_seconds, end_seconds, positive_labels
--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/0ytgt"
-0RWZT-miFs, 420.000, 430.000, "/m/04rlf"
-1nilez17Dg, 0.000, 10.000, "/m/0ytgt"
'''


@pytest.fixture
def audioset(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "class_labels_indices.csv").write_text(AUDIOSET_LABELS)
    (ann / "balanced_train_segments.csv").write_text(AUDIOSET_SEGMENTS)
    media = tmp_path / "media"
    touch(media / "--PJHxphWEs_30.mp4")
    touch(media / "part2" / "-0RWZT-miFs_420.mkv")  # a sub-folder and another container are found too
    return ann, media, tmp_path / "out"


def test_audioset_labels_are_display_names_and_missing_media_is_counted(audioset):
    ann, media, out = audioset
    result = prepare_audioset(ann, media, out)
    assert result.multi_label
    assert read_classes(result.classes) == ["Speech", "Child speech, kid speaking", "Music"]
    split = result.splits["balanced_train"]
    assert (split.rows, split.written, split.missing) == (3, 2, 1)
    rows = read_manifest(split.manifest)
    assert [r.labels for r in rows] == [("Speech", "Child speech, kid speaking"), ("Music",)]
    assert rows[0].path.resolve() == (media / "--PJHxphWEs_30.mp4").resolve()
    assert rows[1].path.resolve() == (media / "part2" / "-0RWZT-miFs_420.mkv").resolve()
    assert rows[0].start is None  # the media are the cut 10 s segments
    assert split.missing_list.read_text().split() == ["-1nilez17Dg,0.000,10.000"]


def test_audioset_full_videos_keep_the_segment_window(audioset):
    ann, media, out = audioset
    touch(media / "Y-1nilez17Dg.mp4")
    result = prepare_audioset(ann / "balanced_train_segments.csv", media, out, pattern="Y{ytid}.mp4",
                              full_videos=True)
    rows = read_manifest(result.splits["balanced_train"].manifest)
    assert [(r.start, r.end) for r in rows] == [(0.0, 10.0)]


def test_audioset_keep_missing_writes_the_expected_path(audioset):
    ann, media, out = audioset
    result = prepare_audioset(ann, media, out, keep_missing=True)
    rows = read_manifest(result.splits["balanced_train"].manifest)
    assert len(rows) == 3 and rows[2].path.name == "-1nilez17Dg_0.mp4"


def test_audioset_unknown_label_names_the_line(audioset):
    ann, media, out = audioset
    (ann / "balanced_train_segments.csv").write_text(AUDIOSET_SEGMENTS + 'abc, 1.0, 11.0, "/m/nope"\n')
    with pytest.raises(ManifestError, match=r"balanced_train_segments.csv:7: label '/m/nope'"):
        prepare_audioset(ann, media, out)


@pytest.mark.parametrize("name", [
    "--PJHxphWEs_30.000_40.000.mp4",  # AudioSet's CSV spelling of the times
    "--PJHxphWEs_30_40.mp4",
    "--PJHxphWEs_000030_000040.mp4",  # VGGSound-style zero-padded seconds
    "--PJHxphWEs_30000_40000.mp4",  # milliseconds
])
def test_audioset_default_patterns_find_the_common_namings(tmp_path, name):
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "class_labels_indices.csv").write_text(AUDIOSET_LABELS)
    (ann / "eval_segments.csv").write_text('--PJHxphWEs, 30.000, 40.000, "/m/09x0r"\n')
    touch(tmp_path / "media" / name)
    split = prepare_audioset(ann, tmp_path / "media", tmp_path / "out").splits["eval"]
    assert (split.written, split.missing) == (1, 0)
    assert read_manifest(split.manifest)[0].path.name == name


def test_audioset_fractional_starts_are_not_truncated(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "class_labels_indices.csv").write_text(AUDIOSET_LABELS)
    (ann / "eval_segments.csv").write_text('a1, 2.500, 12.500, "/m/09x0r"\nb2, 2.000, 12.000, "/m/04rlf"\n'
                                           'c3, 7.250, 17.250, "/m/04rlf"\n')
    media = tmp_path / "media"
    touch(media / "a1_2.5_12.5.mp4")
    touch(media / "a1_2_12.mp4")  # a whole-second spelling of a1 must not be taken for it
    touch(media / "b2_2_12.mp4")
    touch(media / "c3_7.250.mp4")
    result = prepare_audioset(ann, media, tmp_path / "out", pattern=["{ytid}_{start}_{end}.mp4",
                                                                     "{ytid}_{start:.3f}.mp4"])
    split = result.splits["eval"]
    assert [r.path.name for r in read_manifest(split.manifest)] == ["a1_2.5_12.5.mp4", "b2_2_12.mp4",
                                                                     "c3_7.250.mp4"]
    assert split.matched == {"{ytid}_{start}_{end}.mp4": 2, "{ytid}_{start:.3f}.mp4": 1}
    assert "'{ytid}_{start}_{end}.mp4': 2, '{ytid}_{start:.3f}.mp4': 1" in result.summary()


def test_several_patterns_from_the_command_line_are_tried_in_order(audioset, capsys):
    ann, media, out = audioset
    touch(media / "Y-1nilez17Dg.mp4")
    assert main(["data", "prepare", "audioset", "--annotations", str(ann), "--media", str(media), "--out", str(out),
                 "--pattern", "{ytid}_{start}.mp4", "--pattern", "{ytid}_{start}.mkv", "--pattern",
                 "Y{ytid}.mp4"]) == 0
    printed = capsys.readouterr().out
    assert "3 rows" in printed and "'Y{ytid}.mp4': 1" in printed
    assert main(["data", "prepare", "audioset", "--annotations", str(ann), "--media", str(media), "--out", str(out),
                 "--pattern", "{nope}.mp4"]) == 2
    assert "--pattern '{nope}.mp4': bad field" in capsys.readouterr().err


# ==================================================================== VGGSound
VGGSOUND = '''---g-f_I2yQ,1,people marching,test
--0PQM4-hqg,30,waterfall burbling,train
--56QUhyDQM,185,"cattle, bovinae cowbell",train
--5OkAjCI7g,40,"cattle, bovinae cowbell",test
'''


def test_vggsound_writes_train_and_test_with_sorted_classes(tmp_path):
    (tmp_path / "vggsound.csv").write_text(VGGSOUND)
    media = tmp_path / "video"
    touch(media / "---g-f_I2yQ_000001.mp4")
    touch(media / "--0PQM4-hqg_000030.mp4")
    touch(media / "--56QUhyDQM_000185.mp4")
    result = prepare_vggsound(tmp_path, media, tmp_path / "out")
    assert read_classes(result.classes) == ["cattle, bovinae cowbell", "people marching", "waterfall burbling"]
    train, test = read_manifest(result.splits["train"].manifest), read_manifest(result.splits["test"].manifest)
    assert [r.labels for r in train] == [("waterfall burbling",), ("cattle, bovinae cowbell",)]
    assert [r.path.name for r in test] == ["---g-f_I2yQ_000001.mp4"]
    assert (result.splits["test"].missing, result.splits["train"].missing) == (1, 0)
    assert result.splits["test"].missing_list.read_text() == "--5OkAjCI7g,40\n"


def test_vggsound_start_end_zero_padded_names_are_found(tmp_path):
    (tmp_path / "vggsound.csv").write_text(VGGSOUND)
    media = tmp_path / "video"
    touch(media / "--0PQM4-hqg_000030_000040.mp4")
    touch(media / "--56QUhyDQM_185.mp4")
    split = prepare_vggsound(tmp_path, media, tmp_path / "out").splits["train"]
    assert [r.path.name for r in read_manifest(split.manifest)] == ["--0PQM4-hqg_000030_000040.mp4",
                                                                     "--56QUhyDQM_185.mp4"]


def test_vggsound_unquoted_comma_label_is_an_error_naming_the_line(tmp_path):
    (tmp_path / "vggsound.csv").write_text(VGGSOUND + "abc,3,cattle, bovinae cowbell,train\n")
    (tmp_path / "video").mkdir()
    with pytest.raises(ManifestError, match=r"vggsound.csv:5: expected ytid,start_seconds,label,split"):
        prepare_vggsound(tmp_path / "vggsound.csv", tmp_path / "video", tmp_path / "out")


# ==================================================================== Epic-Kitchens-100
EPIC_VERBS = '''id,key,instances,category
0,take,"['collect-from', 'get', 'pick-up']",retrieve
1,put,"['place', 'put-down']",leave
2,filter,"['drain', 'strain']",split
'''
EPIC_NOUNS = '''id,key,instances,category
0,tap,"['tap', 'tap:water']",appliances
1,board:chopping,"['board:chopping', 'chopping:board']",cookware
2,filter,"['filter', 'filter:coffee']",utensils
'''
EPIC_HEADER = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
               "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")
EPIC_TRAIN = EPIC_HEADER + '''P01_01_0,P01,P01_01,00:00:01.089,00:00:00.14,00:00:03.37,8,202,pick up tap,pick-up,0,tap,0,['tap'],[0]
P01_01_1,P01,P01_01,00:00:04.370,00:01:02.50,00:01:05.00,3750,3900,put board in filter,put-in,1,board:chopping,1,"['board:chopping', 'filter']","[1, 2]"
P02_103_0,P02,P02_103,00:00:01.000,00:00:01.00,00:00:02.00,60,120,drain filter,drain,2,filter,2,['filter'],[2]
P09_01_0,P09,P09_01,00:00:01.000,00:00:01.00,00:00:02.00,60,120,take tap,take,0,tap,0,['tap'],[0]
P09_01_1,P09,P09_01,00:00:03.000,00:00:03.00,00:00:04.00,180,240,take tap,take,0,tap,0,['tap'],[0]
'''
EPIC_VALIDATION = EPIC_HEADER + '''P01_11_0,P01,P01_11,00:00:02.000,00:00:02.00,00:00:02.00,120,120,put tap,put,1,tap,0,['tap'],[0]
P01_11_1,P01,P01_11,00:00:02.000,00:00:02.00,00:00:03.50,120,210,put tap,put,1,tap,0,['tap'],[0]
'''


@pytest.fixture
def epic(tmp_path):
    ann = tmp_path / "annotations"
    ann.mkdir()
    for name, text in (("EPIC_100_verb_classes.csv", EPIC_VERBS), ("EPIC_100_noun_classes.csv", EPIC_NOUNS),
                       ("EPIC_100_train.csv", EPIC_TRAIN), ("EPIC_100_validation.csv", EPIC_VALIDATION)):
        (ann / name).write_text(text)
    media = tmp_path / "EPIC-KITCHENS"
    touch(media / "P01" / "videos" / "P01_01.MP4")
    touch(media / "P02_103.MP4")
    touch(media / "P01" / "videos" / "P01_11.MP4")
    return ann, media, tmp_path / "out"


def test_epic_labels_come_from_class_ids_verbs_then_nouns(epic):
    ann, media, out = epic
    result = prepare_epic_kitchens(ann, media, out)
    assert result.class_splits == (3, 3)
    # `filter` is both a verb and a noun: class names must be unique, so both say which head they belong to
    assert read_classes(result.classes) == ["take", "put", "filter (verb)", "tap", "board:chopping",
                                            "filter (noun)"]
    rows = read_manifest(result.splits["train"].manifest)
    # the `verb` column holds the narrated word (pick-up, drain): the label is the key of verb_class
    assert [r.labels for r in rows] == [("take", "tap"), ("put", "board:chopping"), ("filter (verb)", "filter (noun)")]
    assert [(r.start, r.end) for r in rows] == [(0.14, 3.37), (62.5, 65.0), (1.0, 2.0)]
    assert [r.path.name for r in rows] == ["P01_01.MP4", "P01_01.MP4", "P02_103.MP4"]
    train = result.splits["train"]
    assert (train.rows, train.written, train.missing) == (5, 3, 2)
    assert train.missing_list.read_text() == "P09_01\n"  # each missing video listed once


def test_epic_empty_segment_is_dropped_and_counted(epic):
    ann, media, out = epic
    validation = prepare_epic_kitchens(ann, media, out).splits["validation"]
    assert (validation.rows, validation.written, validation.dropped) == (2, 1, 1)
    assert [(r.start, r.end) for r in read_manifest(validation.manifest)] == [(2.0, 3.5)]


def test_epic_bad_timestamp_names_the_line(epic):
    ann, media, out = epic
    (ann / "EPIC_100_validation.csv").write_text(EPIC_HEADER + "x,P01,P01_11,0,00:00:xx,00:00:03.00,1,2,a,b,0,c,0,[],[]\n")
    with pytest.raises(ManifestError, match=r"EPIC_100_validation.csv:2: timestamp '00:00:xx'"):
        prepare_epic_kitchens(ann, media, out)


def test_prepare_command_prints_the_class_splits(epic, capsys):
    ann, media, out = epic
    code = main(["data", "prepare", "epic-kitchens", "--annotations", str(ann), "--media", str(media),
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "model.class_splits=[3, 3]" in printed and "model.num_classes=6" in printed
    assert "2 without a media file" in printed
    assert (out / "train.csv").exists() and (out / "validation.csv").exists()


def test_prepare_command_reports_a_missing_media_folder(tmp_path, capsys):
    (tmp_path / "vggsound.csv").write_text(VGGSOUND)
    code = main(["data", "prepare", "vggsound", "--annotations", str(tmp_path), "--media", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "media folder does not exist" in capsys.readouterr().err


def test_annotation_files_saved_with_a_byte_order_mark_read_as_utf8(audioset):
    """Spreadsheet programs save CSV with a BOM: the header's first column must still be found."""
    ann, media, out = audioset
    labels = (ann / "class_labels_indices.csv")
    labels.write_bytes(b"\xef\xbb\xbf" + labels.read_bytes())
    result = prepare_audioset(ann, media, out)
    assert read_classes(result.classes)[0] == "Speech"


def test_an_annotation_file_in_another_encoding_names_the_file_and_line(audioset):
    ann, media, out = audioset
    (ann / "class_labels_indices.csv").write_bytes(AUDIOSET_LABELS.replace("Music", "Musique \xe9t\xe9")
                                                   .encode("latin-1"))
    with pytest.raises(ManifestError, match=r"class_labels_indices.csv:4: .*not UTF-8.*0xe9"):
        prepare_audioset(ann, media, out)
