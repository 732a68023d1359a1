"""`distill push`: the student and its datasets to the Hugging Face Hub, each with a card.

    stage.py  run(PushConfig, recipe): local checks, the token, the exact upload folders, remote checks, commits
    cards.py  the model and dataset cards from the facts of the run
"""
