"""Helpers for the tests and benchmarks of code that uses scoreflow (as torch.testing is for torch).

Standard library only, and nothing here imports torch, so a benchmark or a test may import it first:

- scripted_server.py: a loopback OpenAI-compatible server whose replies and faults a test scripts
  (FakeOpenAIServer, Reply, completion);
- texts.py: the fixed prompts and texts that the parity tests, the tokenizer tests and
  bench/bench_qwen_parity.py share.
"""
