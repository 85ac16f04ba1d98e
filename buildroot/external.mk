include $(sort $(wildcard $(BR2_EXTERNAL_AOS_SM_PATH)/package/*/*.mk))
