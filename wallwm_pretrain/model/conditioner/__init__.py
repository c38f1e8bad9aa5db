"""The text conditioner: a frozen vision-language model and the heads trained on its states."""
