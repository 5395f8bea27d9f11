"""The model tests' trained run: `shapes`, `tiny_run` and `tiny_bundle` live in tests/conftest.py.

Modules that test one training in particular (test_train, test_method_contract, test_djsrh,
test_video_train, test_finetune, test_sentence_export) train their own; a test that only needs
*a* trained run or bundle takes the session's.
"""
