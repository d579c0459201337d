"""Publishing: the model card (`model_card`, from the template in `model_cards/`) and the Hub upload (`hub`)."""
