"""The ``model.create`` contract, shared by the gateway and the train service.

``options`` parses and checks DIGITS's New Model form (``TrainOptions``); ``lr_policies`` holds the
learning-rate policies, their form defaults and DIGITS's formula; ``augment`` the augmentation
options (and their numpy implementation); ``archive`` the model archive's layout names and limits,
and the checks an uploaded archive must pass. Nothing here imports TensorFlow or Flask.
"""
