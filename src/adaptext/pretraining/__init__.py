"""Continued pre-training on unlabelled text (`adaptext pretrain`): masked-language modelling, SimCSE and TSDAE as
methods of the one training engine (`methods.py`), and the run that saves the adapted encoder (`run.py`)."""
