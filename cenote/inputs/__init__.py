"""Inputs: prompts as users give them (``prompts``), chat messages rendered to text
(``chat``), and the tokenizer that turns them into input records (``tokenizer``)."""
