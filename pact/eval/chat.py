"""The chat form of the lmms-eval model ``pact``, what ``lmms-eval --model pact`` runs.

lmms-eval's guide recommends chat models: the task writes each prompt as messages
(``doc_to_messages``: system and user turns, images where they belong) and the model's
processor renders them with its chat template, instead of the model guessing where the
images go in a flat context. lmms-eval builds such requests for generation tasks only;
log-likelihood tasks need the simple form (:class:`pact.eval.lmms.PactLMM`, lmms-eval's
``--force_simple``; ``pact eval`` picks it by itself). Importing this imports lmms-eval.
"""

from __future__ import annotations

from lmms_eval.protocol import ChatMessages

from pact.eval.lmms import PactLMM, batch_group, request_images
from pact.eval.runner import Generation, chat_text


class PactChatLMM(PactLMM):
    """:class:`PactLMM` answering ``(context, doc_to_messages, gen_kwargs, doc_id, task,
    split)`` requests: the same arguments, batching, data parallelism and figures."""

    is_simple = False

    def generate_until(self, requests) -> list[str]:
        """Answers of chat requests, batched like the simple model's."""
        return self._answer(requests, "generate_until", _chat_group, self._chat_chunk)

    def loglikelihood(self, requests):
        raise NotImplementedError(
            "lmms-eval sends log-likelihood requests to simple models: run lmms-eval with "
            "--force_simple, or pact eval with --interface simple"
        )

    def _chat_chunk(self, handle, chunk: list) -> list[str]:
        first = chunk[0]
        generation = Generation.from_kwargs(dict(first[2]), self.max_new_tokens)
        texts, images = [], []
        for _, doc_to_messages, _, doc_id, task, split in chunk:
            text, visuals = self._chat_prompt(doc_to_messages(self._doc(task, split, doc_id)), task)
            texts.append(text)
            images.extend(visuals)
        answers, totals = self.runner.generate(handle, texts, images, generation)
        self.totals.add(first[4], totals)
        return answers

    def _rounds(self, handle, args) -> list[str]:
        """Every round's answer: ``doc_to_messages`` is asked for round 1, 2, ... with the
        answers so far, until it says the dialogue is over."""
        _, doc_to_messages, gen_kwargs, doc_id, task, split = args
        doc = self._doc(task, split, doc_id)

        def next_turn(outputs: list[str], info):
            messages, over, previous, info = doc_to_messages(
                doc, round_idx=len(outputs), previous_output=list(outputs),
                previous_round_info=info,
            )  # fmt: skip
            return (None if over else self._chat_prompt(messages, task)), previous, info

        first = self._chat_prompt(doc_to_messages(doc), task)
        return self._dialogue(handle, task, gen_kwargs, first, next_turn)

    def _chat_prompt(self, messages: list[dict], task: str) -> tuple[str, list]:
        """The prompt text and its images, in order, from lmms-eval's chat messages."""
        chat = ChatMessages(messages=messages)
        images, videos, audios = chat.extract_media()
        images = request_images(images + videos + audios, task)  # refuses what is not an image
        return chat_text(self.processor, chat.to_hf_messages()), images


def _chat_group(args) -> dict:
    _, _, gen_kwargs, _, task, split = args
    return batch_group(task, split, gen_kwargs)
