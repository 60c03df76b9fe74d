from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.fields.base import OnDelete
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0005_prune_index')]

    initial = False

    operations = [
        ops.CreateModel(
            name='Trigger',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('workflow', fields.ForeignKeyField('models.Workflow', source_field='workflow_id', db_constraint=True, to_field='id', related_name='triggers', on_delete=OnDelete.CASCADE)),
                ('name', fields.CharField(max_length=255)),
                ('secret', fields.CharField(max_length=128)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'triggers', 'app': 'models', 'pk_attr': 'id', 'table_description': 'A webhook: `POST /hooks/{id}` signed with its secret starts its workflow.'},
            bases=['Model'],
        ),
    ]
