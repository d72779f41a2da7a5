"""The Python API's messages, as a bot sees them."""

from __future__ import annotations

from pathlib import Path

import pytest

from softphone import AudioFileError, SharedPrompt


def test_a_prompt_from_a_folder_says_it_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(AudioFileError) as raised:
        SharedPrompt.from_file(tmp_path)
    assert str(raised.value) == f"{tmp_path}: a folder, not an audio file"
    with pytest.raises(AudioFileError, match="no such file"):
        SharedPrompt.from_file(tmp_path / "nope.wav")


def test_a_file_source_from_a_folder_says_it_is_a_folder(tmp_path: Path) -> None:
    from softphone import AudioFileError, FileSource

    with pytest.raises(AudioFileError) as raised:
        FileSource.from_file(tmp_path)
    assert str(raised.value) == f"{tmp_path}: a folder, not an audio file"
