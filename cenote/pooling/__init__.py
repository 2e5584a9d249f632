"""Pooling: a *method* picks token rows from the model's packed hidden states
(``methods``), a *head* turns them into the task's output (``heads``), the
``Pooler`` composes one method and one head per pooling task, and the
``PoolingPolicy`` resolves what a request may ask of them (``policy``)."""
