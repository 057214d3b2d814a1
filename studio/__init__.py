"""The studio: a web page on the interpreter. A person uploads a picture (or generates one),
looks at its caption and priors, runs ``interpret``, compares the ranked samples, chooses the best and
rates them; every run and choice is kept in SQLite and exported as a Hugging Face ``imagefolder``
dataset for fine-tuning. Started by scripts/studio.sh; settings in studio/studio.yaml."""
