"""The rank stage's chunk files are JSON lines: an answer may hold any character a model can sample, and the
line separators str.splitlines() also splits on (U+2028, U+2029, U+0085, U+001C-U+001E unescaped by JSON
with ensure_ascii=False) must come back as text, never as the end of a record."""

import json

from stages.rank.candidates import chunk_path, generate_candidates


def test_sampled_chunks_read_back_whole_whatever_characters_the_answers_hold(tmp_path):
    odd = "a\u2028b\u2029c\x85d\x1ce"
    records = [{"prompt_id": f"p{i}", "prompt": "q", "responses": [odd + str(i), "x"]} for i in range(3)]
    for c, chunk in enumerate([records[:2], records[2:]]):
        chunk_path(tmp_path, "candidates", c).write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chunk))
    prompts = [{"prompt": "q"}] * 3  # every chunk is on disk: nothing is sampled, so no model is needed
    back = generate_candidates(None, None, prompts, kind="candidates", directory=tmp_path, k=2, temperatures=[1.0],
                               max_new_tokens=4, batch_size=1, chunk_prompts=2, seed=0, policy="p")
    assert back == records
